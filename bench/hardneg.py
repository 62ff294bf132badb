"""Hard negatives: gate pass rate on real reports (Open-i) and on the demo dump, and speed.

    python bench/hardneg.py [n_reports=227835] [workers=2] [openi=true] [dir=...] [keep=false]

1. Open-i (../shared/data/openi/reports.csv): dag=labels as bench/accuracy_openi.py runs it, then
   hardneg_rewrite, reread and hardneg; prints candidates, rewrites tried (a family applied),
   the gate's pass rate over them, pairs and negated reports shipped, and failures by family.
2. A generated MIMIC-CXR-shaped demo dump of ``n_reports`` reports (profile=full): ingest,
   parse, extract on one cluster, then the three hardneg stages on a fresh cluster, so each
   worker's peak RSS is theirs; the same figures plus reports/s of the three stages together.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import demo_text_run, mib, print_figures, worker_peak_rss  # noqa: E402

from pipeline.core.io import read_dataset  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.hardneg.stage import GateConfig, HardnegConfig  # noqa: E402
from pipeline.text.reread import RereadConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


STAGES = (("hardneg_rewrite", HardnegConfig()), ("reread", RereadConfig()), ("hardneg", GateConfig()))


def hardneg_stages(out: Path, workers: int) -> tuple[dict[str, float], dict[str, int]]:
    """Run the three hardneg stages on a fresh cluster; (seconds per stage, worker peak RSS)."""
    with dask_client(ClusterConfig(n_workers=workers)) as client:
        runner = Runner(str(out), client)
        secs = {name: runner.run_stage(get_stage(name), config).seconds for name, config in STAGES}
        return secs, worker_peak_rss(client)


def gate_figures(out: Path) -> list[tuple[str, str]]:
    """Candidates, how many a family could rewrite, the gate's pass rate, what shipped."""
    cand = read_dataset(str(out), "hardneg_candidates", ["candidate_id", "kind", "method"]).to_pandas()
    rejects = read_dataset(str(out), "rejects", ["stage", "row_id", "detail"]).to_pandas()
    failed = rejects[(rejects.stage == "hardneg") & ~rejects.detail.str.startswith("no rewrite family")]
    tried = cand[cand.method != "none"]
    method = dict(zip(cand.candidate_id, cand.method, strict=True))
    by_family = Counter(method[i].split(".")[0] for i in failed.row_id)
    rows = [
        (
            "candidates (flips | negated reports)",
            f"{(cand.kind == 'flip').sum():,} | {(cand.kind == 'denial').sum():,}",
        ),
        (
            "flips a family could rewrite",
            f"{(tried.kind == 'flip').sum() / max((cand.kind == 'flip').sum(), 1):.1%}",
        ),
        (
            "gate pass rate (rewrites tried)",
            f"{1 - len(failed) / max(len(tried), 1):.2%} ({len(failed):,} failed)",
        ),
        (
            "negation_pairs shipped",
            f"{read_dataset(str(out), 'negation_pairs', ['candidate_id']).num_rows:,}",
        ),
        (
            "negated_reports | cxr_align",
            f"{read_dataset(str(out), 'negated_reports', ['candidate_id']).num_rows:,} | "
            f"{read_dataset(str(out), 'cxr_align', ['report_id']).num_rows:,}",
        ),
    ]
    rows += [(f"  failed: {k}", f"{v:,}") for k, v in sorted(by_family.items())]
    return rows


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-hardneg-"))
    try:
        if args.get("openi", "true") == "true" and (data / "openi" / "reports.csv").exists():
            from accuracy_openi import run_labels_dag

            out = work / "openi"
            run_labels_dag(data, out, workers)
            secs, _ = hardneg_stages(out, workers)
            rows = gate_figures(out)
            rows.append(("hardneg stages s", f"{sum(secs.values()):.1f}"))
            print_figures("Open-i hard negatives", rows)
        out, generated = demo_text_run(work, n, workers)
        rows = [("demo dump generated", f"{generated:.0f} s")]
        secs, rss = hardneg_stages(out, workers)
        n_reports = read_dataset(str(out), "reports", ["report_id"]).num_rows
        rows += gate_figures(out)
        for name, s in secs.items():
            rows.append((f"{name}: s | reports/s ({workers} workers)", f"{s:.1f} | {n_reports / s:,.0f}"))
        total = sum(secs.values())
        rows.append(
            (f"three stages: s | reports/s ({workers} workers)", f"{total:.1f} | {n_reports / total:,.0f}")
        )
        rows.append(("hardneg stages: worker peak RSS (max)", mib(max(rss.values()))))
        print_figures(f"demo dump, {n_reports:,} reports", rows)
    finally:
        if args.get("keep") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
