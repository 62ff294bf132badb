"""Peak memory and time of the text engine (parse, extract) on one absurdly long report.

    python bench/text_memory.py [sizes=5,50] [shapes=reports,one] [stages=parse,extract]
                                [cache_size=100000] [windows=default] [data=../shared/data]

A report of ``size`` MB is built from real-looking report text: Open-i findings and impressions
(when ``data`` has them, read in place) and templated sentences with varied findings, sides,
sizes, negations and hedges, wrapped at 79 columns (MIMIC-CXR's layout), so sentences span lines
and repeat about as much as real text does. ``shapes``: ``reports``, FINDINGS/IMPRESSION pairs
run together (only the last impression counts toward labels); ``one``, one IMPRESSION section of
many paragraphs (every mention counts, so the labels' provenance grows with the report). The
report is the only row of its ``reports`` table, as if ``stages.ingest.max_chars`` had been
raised for it.

Each figure comes from a fresh subprocess that loads the engine, builds the inputs (for extract:
the parse stage's outputs) after a warm-up on a 300 kB report (one-time costs are a worker's, not
a report's), resets its peak-RSS mark (``/proc/self/clear_refs``), then runs one stage function.
"peak" is the peak RSS above the RSS just before the stage (inputs, engine and interpreter
excluded), also as a multiple of the text's size in bytes; "+ write" is the same mark after the
outputs were also conformed and written to zstd Parquet, as the runner does next; "output" is the
outputs' Arrow size; seconds are the stage's, wall clock and CPU (the steadier figure on a shared
machine); "memo" is the number of sentences in extract's memo afterwards.

"before (windows off)" sets ``pipeline.text.windows.WINDOW_CHARS = 0`` (every report read in one
piece), "after" keeps the default (``windows=default``: that one only). ``cache_size`` is
extract's sentence memo (entries; the memo is the worker's, bounded whatever the report, and a
huge report fills it: a small one shows the report's own share). To measure another checkout (one
without windows, say), run this script with ``PYTHONPATH`` pointing at that checkout and
``windows=default``.
"""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: see the docstring

from _common import mib, print_figures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

FINDINGS = (
    "pleural effusion", "pneumothorax", "focal consolidation", "pulmonary edema", "atelectasis",
    "pulmonary nodule", "pneumonia", "rib fracture", "cardiomegaly", "interstitial opacity",
    "hilar adenopathy", "mass", "emphysema", "pulmonary vascular congestion", "airspace disease",
)  # fmt: skip
SIDES = ("left", "right", "bilateral", "left basilar", "right upper lobe", "right lower lobe")
TEMPLATES = (
    "There is no {f}.",
    "No {f} is seen.",
    "No evidence of {f} or {g}.",
    "{S} {f} is again noted, measuring {n}.{m} cm.",
    "Small {s} {f}, slightly larger than on the prior study.",
    "Possible {s} {f}; {g} cannot be excluded.",
    "Findings may represent {f} versus {g}.",
    "Interval resolution of the {s} {f}.",
    "The heart size is normal and the lungs are clear without {f}.",
    "Heart size is mildly enlarged, unchanged since {n}/{m}.",
    "Endotracheal tube terminates {n}.{m} cm above the carina.",
    "Moderate {s} {f} with adjacent {g}, new since the prior exam.",
    "The mediastinal and hilar contours are unremarkable.",
    "Degenerative changes of the thoracic spine are noted.",
)


def real_sentences(data: Path | None) -> list[str]:
    """Sentences of Open-i findings and impressions (read in place, never copied out)."""
    path = data / "openi" / "reports.csv" if data else None
    if path is None or not path.exists():
        return []
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for col in ("findings", "impression"):
                out += [s.strip() for s in re.split(r"(?<=\.)\s+", row.get(col) or "") if len(s.strip()) > 3]
    return out


def make_report(n_chars: int, seed: int = 0, real: list[str] | None = None, shape: str = "reports") -> str:
    """A report of about ``n_chars`` characters, lines wrapped at 79 columns. ``shape``:
    ``"reports"``, FINDINGS/IMPRESSION paragraph pairs (reports run together: only the last
    impression counts toward labels); ``"one"``, one IMPRESSION of many paragraphs (every mention
    counts: the labels' provenance grows with the report)."""
    rng = random.Random(seed)
    real = real or []

    def sentence() -> str:
        if real and rng.random() < 0.5:
            return rng.choice(real)
        f, g = rng.sample(FINDINGS, 2)
        s = rng.choice(SIDES)
        return rng.choice(TEMPLATES).format(
            f=f, g=g, s=s, S=s.capitalize(), n=rng.randint(1, 12), m=rng.randint(0, 9)
        )

    def paragraph(lo: int, hi: int) -> str:
        return textwrap.fill(" ".join(sentence() for _ in range(rng.randint(lo, hi))), 79)

    parts: list[str] = [] if shape == "reports" else ["IMPRESSION:\n"]
    size = 0
    while size < n_chars:
        if shape == "reports":
            block = f"FINDINGS:\n{paragraph(3, 9)}\n\nIMPRESSION:\n{paragraph(1, 3)}\n\n"
        else:
            block = f"{paragraph(3, 9)}\n\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)[:n_chars]


def _rss_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match, field
    return int(match.group(1))


def child(stage: str, mb: float, window: str, shape: str, data: str, cache_size: int = 100_000) -> dict:
    """One measurement, in this (fresh) process: see the module docstring."""
    import gc
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.schemas import conform
    from pipeline.text.extract import ExtractConfig, extract
    from pipeline.text.nlp import load_engine
    from pipeline.text.parse import ParseConfig, parse

    if window != "default":
        from pipeline.text import windows

        windows.WINDOW_CHARS = int(window)
    engine = load_engine(None, cache_size)  # the measured run's engine (and its sentence memo)
    # warm up on a small long report first: one-time costs (lazy imports, Arrow kernels and thread
    # pools, allocator segments) are a worker's, not a report's
    warm = {
        "reports": pa.table(
            {"report_id": ["warm"], "text": [make_report(300_000, seed=1)], "source": ["mimic_cxr"]}
        )
    }
    warm.update(parse(warm, config=ParseConfig()))
    extract(warm, config=ExtractConfig(cache_size=10))
    del warm
    text = make_report(int(mb * 1e6), real=real_sentences(Path(data) if data else None), shape=shape)
    reports = pa.table({"report_id": ["huge"], "text": [text], "source": ["mimic_cxr"]})
    n_bytes = len(text.encode())
    del text
    tables = {"reports": reports}
    if stage == "extract":
        tables.update(parse(tables, config=ParseConfig()))
        tables.pop("rejects")
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
    before = _rss_kib("VmRSS")
    config = ExtractConfig(cache_size=cache_size)
    started, cpu = time.perf_counter(), time.process_time()
    out = parse(tables, config=ParseConfig()) if stage == "parse" else extract(tables, config=config)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = _rss_kib("VmHWM") - before
    with tempfile.TemporaryDirectory() as tmp:  # what the runner does next: conform, write
        for name, table in out.items():
            pq.write_table(conform(table, name), f"{tmp}/{name}.parquet", compression="zstd")
    peak_written = _rss_kib("VmHWM") - before
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_bytes": peak * 1024,
        "peak_written_bytes": peak_written * 1024,
        "text_bytes": n_bytes,
        "output_bytes": sum(t.nbytes for t in out.values()),
        "rows": {k: v.num_rows for k, v in out.items()},
        "memo_entries": len(engine._cache),
    }


def measure(stage: str, mb: float, window: str, shape: str, data: str, cache_size: int) -> dict:
    cmd = [sys.executable, __file__, "child", stage, str(mb), window, shape, data, str(cache_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if argv and argv[0] == "child":
        print(json.dumps(child(argv[1], float(argv[2]), *argv[3:6], *map(int, argv[6:7]))))
        return
    args = dict(a.split("=", 1) for a in argv)
    sizes = [float(s) for s in args.get("sizes", "5,50").split(",")]
    stages = args.get("stages", "parse,extract").split(",")
    shapes = args.get("shapes", "reports,one").split(",")
    modes = [("before (windows off)", "0"), ("after", "default")]
    if args.get("windows") == "default":
        modes = modes[1:]
    data = args.get("data", str(REPO.parent / "shared" / "data"))
    data = data if Path(data, "openi", "reports.csv").exists() else ""
    cache_size = int(args.get("cache_size", 100_000))
    rows: list[tuple[str, str]] = []
    for mb in sizes:
        for shape in shapes:
            for stage in stages:
                for label, window in modes:
                    got = measure(stage, mb, window, shape, data, cache_size)
                    size = got["text_bytes"]
                    rows.append(
                        (
                            f"{mb:g} MB, {shape}, {stage}, {label}",
                            f"+{mib(got['peak_bytes'])} ({got['peak_bytes'] / size:.1f}x text), "
                            f"+ write +{mib(got['peak_written_bytes'])} "
                            f"({got['peak_written_bytes'] / size:.1f}x), output {got['output_bytes'] / size:.1f}x, "
                            f"{got['seconds']:.1f} s ({got['cpu_seconds']:.1f} s CPU)"
                            + (f", memo {got['memo_entries']:,} sentences" if stage == "extract" else ""),
                        )
                    )
                    print(*rows[-1], sep=": ", flush=True)
    print_figures("text engine on one huge report: peak RSS above the inputs, stage time", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
