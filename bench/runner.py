"""The runner with default settings, as a newcomer meets it: `dag=labels` on a big table of reports,
then a one-row edit, then a rerun with nothing to do. Every run is the real CLI in a fresh process
(start-up included).

    python bench/runner.py [n_reports=77000] [workers=2] [naive_sample=3000] [noop_runs=50]
                           [data=../shared/data] [dir=DIR]

1. A table of ``n_reports`` real-shaped reports: each takes the findings of one Open-i report and
   the impression of another (random pairs), so sentences repeat as they do in a real corpus.
2. `dag=labels` with no setting but the table's columns: wall seconds, reports/s end to end and
   per core, the part size chosen.
3. The naive design-card pipeline (bench/_naive.py) on a sample of the same reports in one
   process, for the per-core ratio.
4. One row's impression edited (size and modification time kept): seconds to rerun, and which
   parts of each stage reran.
5. ``noop_runs`` reruns with nothing to do: seconds each, and exit codes (all must be 0).
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_figures  # noqa: E402
from _naive import naive_rate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "parse", "extract", "agreement")


def write_table(path: Path, openi: Path, n: int, seed: int = 0) -> list[list[str]]:
    with open(openi, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (r["findings"] or r["impression"]).strip()]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.choice(rows), rng.choice(rows)
        out.append([f"r{i:06d}", a["indication"], a["findings"], b["impression"]])
    write_rows(path, out)
    return out


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "indication", "findings", "impression"])
        writer.writerows(rows)


def cli(table: Path, out: Path) -> tuple[float, int, str]:
    args = [
        sys.executable,
        "-m",
        "pipeline.run",
        "dag=labels",
        "dataset=table",
        f"dataset.path={table}",
        "dataset.id_column=uid",
        "dataset.text_columns=[indication,findings,impression]",
        f"out={out}",
        "progress=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done.returncode, done.stderr


def marker_times(out: Path) -> dict[str, dict[str, int]]:
    return {
        s: {p.name: p.stat().st_mtime_ns for p in (out / "_state" / s).glob("part-*.json")} for s in STAGES
    }


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 77_000))
    workers = os.cpu_count() or 2
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-runner-"))
    work.mkdir(parents=True, exist_ok=True)
    table, out = work / "reports.csv", work / "run"
    rows = write_table(table, data / "openi" / "reports.csv", n)
    figures: list[tuple[str, str]] = []

    seconds, code, err = cli(table, out)
    assert code == 0, err
    record = json.loads((out / "_state" / "ingest" / "_stage.json").read_text())
    figures.append((f"dag=labels, {n:,} reports, defaults: seconds (exit {code})", f"{seconds:.1f}"))
    figures.append(
        (
            f"  reports/s end to end | per core ({workers} cores)",
            f"{n / seconds:,.0f} | {n / seconds / workers:,.0f}",
        )
    )
    figures.append(("  parts chosen (rows per part)", f"{record['parts']} ({-(-n // record['parts']):,})"))
    for stage in STAGES:
        rec = json.loads((out / "_state" / stage / "_stage.json").read_text())
        figures.append((f"  {stage}: stage seconds", f"{rec['timings']['stage_seconds']:.1f}"))

    sample = int(args.get("naive_sample", 3000))
    texts = [f"{r[2]}\n{r[3]}" for r in rows[:sample]]
    naive = naive_rate(data, texts)
    figures.append(
        (f"naive design-card pipeline, {sample:,} of the reports, 1 process: reports/s", f"{naive:,.0f}")
    )
    figures.append(("  ours per core / naive", f"{n / seconds / workers / naive:.2f}x"))

    before = marker_times(out)
    stat = table.stat()
    edit = n // 2
    rows[edit][3] = rows[edit][3][::-1]  # the same bytes, reordered: size unchanged
    write_rows(table, rows)
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    seconds, code, err = cli(table, out)
    assert code == 0, err
    after = marker_times(out)
    reran = {s: sorted(k for k in after[s] if after[s][k] != before[s].get(k)) for s in STAGES}
    figures.append((f"one-row edit (row {edit:,}): rerun seconds (exit {code})", f"{seconds:.1f}"))
    for stage in STAGES:
        figures.append((f"  {stage}: parts rerun", ", ".join(p[5:10] for p in reran[stage]) or "none"))

    runs = int(args.get("noop_runs", 50))
    codes: Counter = Counter()
    times = []
    for _ in range(runs):
        seconds, code, err = cli(table, out)
        codes[code] += 1
        times.append(seconds)
    times.sort()
    figures.append(
        (f"no-op reruns: exit codes over {runs}", ", ".join(f"{c}: {k}" for c, k in sorted(codes.items())))
    )
    figures.append(("  seconds median | max", f"{times[len(times) // 2]:.1f} | {times[-1]:.1f}"))
    print_figures(f"the runner with default settings ({work})", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
