"""Where the text engine's time goes: ``extract`` on real Open-i reports, split by part.

    python bench/profile_text.py [data=../shared/data] [repeat=3] [cache=true] [top=0]
                                 [worker=TABLE.csv] [n=40000] [part_size=1975]
                                 [before=REV] [pairs=4]

One process, no Dask. The 2,793 Open-i reports are parsed once; ``extract`` then runs ``repeat``
times (the sentence memo emptied before each; ``cache=false`` turns it off) and the fastest run
is split into (each step's fastest of ``repeat`` timings):

* **tokenizer, lexicon matcher, negation, uncertainty**: each spaCy step timed alone on exactly the
  texts the engine sent to spaCy in that run, in pipeline order (the tokenizer: the engine's
  ``make_doc``, spaCy's tokenizer plus the token lists every later step reads); the lexicon matcher's own
  PhraseMatcher calls are shown apart from the rest of it (prefix terms, slash compounds, overlap
  removal);
* **mentions (our Python)**: ``TextEngine._mentions`` on those docs (cues, anatomy, qualifiers,
  statuses);
* **engine, rest**: the rest of ``TextEngine.analyse`` (memo, word pre-check, header masking);
* **tables**: ``extract`` minus ``analyse`` (section flags, Python lists, Arrow tables, labels
  and findings);
* **garbage collection**: seconds inside the collector during the run (``gc.callbacks``), spread
  over the parts above; ``gen2`` counts full collections.

``worker=TABLE.csv`` (a table of ``uid`` and Open-i's section columns, e.g. the 77,000-report
table bench/runner.py writes) adds a worker's view: ``extract`` on ``n`` reports in consecutive
parts of ``part_size``, the memo kept from part to part, in two fresh processes: as the engine
loads (its objects frozen out of the collector, ``gc.freeze``) and with them unfrozen again.

``before=REV`` compares ``extract`` of an earlier version (a git worktree at REV) with this
tree's, in one process each on the same parsed reports: ``pairs`` pairs of fresh processes, who
goes first alternating (this machine's speed drifts over minutes, so only neighbours compare),
each timing its best of ``repeat``. It prints both versions' seconds per pair, the ratio of
their medians, and whether their ``mentions``, ``labels`` and ``findings`` are equal.

``top=N`` adds cProfile's N functions with the most own time (cProfile slows Python code, so
its shares are a guide, the split above the measure).
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
from _common import git_tree, print_figures  # noqa: E402
from accuracy_openi import load_openi  # noqa: E402

from pipeline.core.collector import collector_paused  # noqa: E402
from pipeline.text.config import ExtractConfig  # noqa: E402
from pipeline.text.extract import extract  # noqa: E402
from pipeline.text.nlp import TextEngine, load_engine  # noqa: E402
from pipeline.text.parse import ParseConfig, parse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class GCClock:
    """Seconds spent in the garbage collector while active, and full (generation 2) collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.gen2 = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.gen2 += info["generation"] == 2

    def __enter__(self) -> GCClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def reports_table(data: Path) -> pa.Table:
    reports, _ = load_openi(data)
    return pa.table({"report_id": [r["report_id"] for r in reports], "text": [r["text"] for r in reports]})


def one_run(engine: TextEngine, tables: dict[str, pa.Table], config: ExtractConfig) -> dict:
    """extract once, recording the texts sent to spaCy and the time inside ``analyse``."""
    engine.clear_cache()
    sent: list[str] = []
    inside = {"analyse": 0.0}
    analyse, make_doc = engine.analyse, engine.make_doc

    def timed_analyse(texts):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return analyse(texts)
        finally:
            inside["analyse"] += time.perf_counter() - t0

    def recording_make_doc(text):  # type: ignore[no-untyped-def]
        sent.append(text)  # the prepared text of a sentence the engine sends to spaCy
        return make_doc(text)

    engine.analyse, engine.make_doc = timed_analyse, recording_make_doc  # type: ignore[method-assign]
    try:
        with GCClock() as clock:
            t0 = time.perf_counter()
            extract(tables, config=config)
            total = time.perf_counter() - t0
    finally:
        del engine.analyse, engine.make_doc
    return {"total": total, "analyse": inside["analyse"], "texts": sent, "gc": clock}


def split_spacy(engine: TextEngine, texts: list[str]) -> dict[str, float]:
    """Each spaCy step alone on ``texts``, in pipeline order, then the engine's own Python."""
    with collector_paused():  # as inside analyse
        return _split_spacy(engine, texts)


def _split_spacy(engine: TextEngine, texts: list[str]) -> dict[str, float]:
    nlp = engine.nlp
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    docs = [engine.make_doc(t) for t in texts]
    out["tokenizer"] = time.perf_counter() - t0
    for name, proc in nlp.pipeline:
        if name == "clip2clinic_lexicon":
            t0 = time.perf_counter()
            for doc in docs:
                proc.matchers.phrase(doc)
            out["lexicon: PhraseMatcher calls"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        docs = [proc(doc) for doc in docs]
        out[name if name != "clip2clinic_lexicon" else "lexicon matcher"] = time.perf_counter() - t0
    out["lexicon matcher"] -= out["lexicon: PhraseMatcher calls"]
    t0 = time.perf_counter()
    for doc in docs:
        engine._mentions(doc)
    out["mentions (our Python)"] = time.perf_counter() - t0
    return out


def worker_parts(table: Path, n: int, part_size: int, unfreeze: bool) -> dict[str, float]:
    """``extract`` over consecutive parts of ``table`` in this process, as a worker runs them."""
    import pyarrow.csv as pcsv

    raw = pcsv.read_csv(table, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    raw = raw.slice(0, n)
    columns = [c for c in ("indication", "comparison", "findings", "impression") if c in raw.column_names]
    values = zip(*(raw[c].to_pylist() for c in columns), strict=True)
    texts = [
        "\n\n".join(f"{c.upper()}: {v}" for c, v in zip(columns, row, strict=True) if v) for row in values
    ]
    reports = pa.table({"report_id": raw["uid"].cast(pa.string()), "text": texts})
    config = ExtractConfig()
    load_engine(config.lexicon_dir, config.cache_size)
    if unfreeze:
        gc.unfreeze()
    seconds = 0.0
    with GCClock() as clock:
        for start in range(0, reports.num_rows, part_size):
            part = reports.slice(start, part_size)
            tables = {"reports": part, **parse({"reports": part}, config=ParseConfig())}
            t0 = time.perf_counter()
            extract(tables, config=config)
            seconds += time.perf_counter() - t0
    return {"reports": reports.num_rows, "extract": seconds, "gc": clock.seconds, "full": clock.gen2}


def worker_rows(table: Path, n: int, part_size: int) -> list[tuple[str, str]]:
    import json
    import subprocess

    rows = []
    for unfreeze in (False, True):
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); from profile_text import worker_parts; "
            "print(json.dumps(worker_parts(*sys.argv[2:3], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1')))"
        )
        args = [sys.executable, "-c", code, str(Path(__file__).parent), str(table), str(n), str(part_size)]
        done = subprocess.run([*args, "1" if unfreeze else "0"], capture_output=True, text=True, check=True)
        got = json.loads(done.stdout.strip().splitlines()[-1])
        name = "engine unfrozen (before)" if unfreeze else "engine frozen (as shipped)"
        rows.append(
            (
                f"{name}: extract",
                f"{got['extract']:.1f} s ({got['reports'] / got['extract']:,.0f} reports/s), "
                f"GC {got['gc']:.1f} s in {got['full']} full",
            )
        )
    return rows


# One timing in a fresh process of the version on PYTHONPATH: extract of the parsed tables in
# argv[1] (Arrow IPC, one table per name), best of argv[2] runs with the memo emptied before each;
# prints the seconds, and writes the last run's outputs to argv[3]. Uses only calls every version
# since 1873cc0 has.
_TIMING = """
import json, sys, time
import pyarrow as pa
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.nlp import load_engine
source, repeat, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tables = {}
for name in ("reports", "sentences", "sections"):
    with pa.ipc.open_file(f"{source}/{name}.arrow") as f:
        tables[name] = f.read_all()
engine = load_engine()
config = ExtractConfig()
best = float("inf")
for _ in range(repeat + 1):  # the first run warms (first calls, lazy imports)
    engine.clear_cache()
    t0 = time.perf_counter()
    result = extract(tables, config=config)
    best = min(best, time.perf_counter() - t0) if _ else best
for name in ("mentions", "labels", "findings"):
    with pa.ipc.new_file(f"{out}/{name}.arrow", result[name].schema) as w:
        w.write_table(result[name])
print(json.dumps({"seconds": best}))
"""


def _save_tables(tables: dict[str, pa.Table], folder: Path) -> None:
    for name, table in tables.items():
        with pa.ipc.new_file(folder / f"{name}.arrow", table.schema) as w:
            w.write_table(table)


def _load_tables(folder: Path) -> dict[str, pa.Table]:
    out = {}
    for name in ("mentions", "labels", "findings"):
        with pa.ipc.open_file(folder / f"{name}.arrow") as f:
            out[name] = f.read_all()
    return out


def before_after(rev: str, tables: dict[str, pa.Table], pairs: int, repeat: int) -> list[tuple[str, str]]:
    """``extract`` of ``rev`` and of this tree, in turn (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="profile-text-") as tmp, git_tree(rev, REPO) as tree:
        work = Path(tmp)
        _save_tables(tables, work)
        seconds: dict[str, list[float]] = {"before": [], "after": []}
        results = {}
        for k in range(pairs):
            for version in ("before", "after") if k % 2 == 0 else ("after", "before"):
                root = tree if version == "before" else REPO
                out = work / version
                out.mkdir(exist_ok=True)
                env = {**os.environ, "PYTHONPATH": str(root)}
                done = subprocess.run(
                    [sys.executable, "-c", _TIMING, str(work), str(repeat), str(out)],
                    cwd=root, env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                seconds[version].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
                results[version] = _load_tables(out)
        equal = all(results["before"][n].equals(results["after"][n]) for n in results["before"])
    n = tables["reports"].num_rows
    rows = [
        (f"pair {k + 1} ({'before' if k % 2 == 0 else 'after'} first)", f"{b:.3f} -> {a:.3f} s")
        for k, (b, a) in enumerate(zip(seconds["before"], seconds["after"], strict=True))
    ]
    med_b, med_a = statistics.median(seconds["before"]), statistics.median(seconds["after"])
    rows += [
        (f"{rev} (median of pairs)", f"{med_b:.3f} s ({n / med_b:,.0f} reports/s)"),
        ("this tree (median of pairs)", f"{med_a:.3f} s ({n / med_a:,.0f} reports/s)"),
        ("speed-up", f"{med_b / med_a:.2f}x"),
        ("mentions, labels, findings equal", "yes" if equal else "NO"),
    ]
    return rows


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    repeat = int(args.get("repeat", 3))
    cache = args.get("cache", "true").lower() == "true"
    top = int(args.get("top", 0))

    reports = reports_table(data)
    t0 = time.perf_counter()
    tables = {"reports": reports, **parse({"reports": reports}, config=ParseConfig())}
    parse_s = time.perf_counter() - t0
    config = ExtractConfig(cache_size=100_000 if cache else 0)
    t0 = time.perf_counter()
    engine = load_engine(config.lexicon_dir, config.cache_size)
    load_s = time.perf_counter() - t0
    one_run(engine, tables, config)  # warm: first calls, lazy imports
    runs = [one_run(engine, tables, config) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["total"])
    total = best["total"]
    splits = [split_spacy(engine, best["texts"]) for _ in range(repeat)]
    spacy_parts = {name: min(split[name] for split in splits) for name in splits[0]}
    engine_rest = best["analyse"] - sum(spacy_parts.values())
    parts = {**spacy_parts, "engine, rest": engine_rest, "tables": total - best["analyse"]}

    n = reports.num_rows
    rows = [
        ("reports (Open-i)", f"{n:,}"),
        ("sentences", f"{tables['sentences'].num_rows:,}"),
        ("sentence memo", "on" if cache else "off"),
        ("texts sent to spaCy", f"{len(best['texts']):,}"),
        ("engine load", f"{load_s:.2f} s"),
        ("parse", f"{parse_s:.2f} s ({n / parse_s:,.0f} reports/s)"),
        (f"extract (best of {repeat})", f"{total:.2f} s ({n / total:,.0f} reports/s)"),
    ]
    rows += [(f"  {name}", f"{s:.3f} s  {100 * s / total:4.1f}%") for name, s in parts.items()]
    clock = best["gc"]
    rows.append(
        ("  garbage collection (inside the above)", f"{clock.seconds:.3f} s  {100 * clock.seconds / total:4.1f}%"
         f"  ({clock.gen2} full)")
    )  # fmt: skip
    rows.append(
        ("objects tracked by the collector", f"{len(gc.get_objects()):,} ({gc.get_freeze_count():,} frozen)")
    )
    print_figures("extract, where the time goes", rows)

    if "worker" in args:
        n_worker, part_size = int(args.get("n", 40_000)), int(args.get("part_size", 1975))
        title = f"a worker's parts: {n_worker:,} reports of {args['worker']}, parts of {part_size:,}"
        print_figures(title, worker_rows(Path(args["worker"]), n_worker, part_size))

    if "before" in args:
        title = f"extract before / after, one process each, {args['before']} / this tree (best of {repeat})"
        print_figures(title, before_after(args["before"], tables, int(args.get("pairs", 4)), repeat))

    if top:
        engine.clear_cache()
        profiler = cProfile.Profile()
        profiler.runcall(extract, tables, config=config)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main(sys.argv[1:])
