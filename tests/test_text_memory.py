"""The text engine on absurdly long reports: windows (pipeline/text/windows.py) read them as the
whole text would be read, and keep memory in proportion to the text."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.text import windows
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.nlp import load_engine
from pipeline.text.parse import ParseConfig, parse
from pipeline.text.sections import strip_span
from pipeline.text.windows import sentence_windows

REPO = Path(__file__).resolve().parents[1]
FINDINGS = (
    "pleural effusion", "pneumothorax", "focal consolidation", "pulmonary edema", "atelectasis",
    "pulmonary nodule", "pneumonia", "rib fracture", "cardiomegaly", "hilar adenopathy",
)  # fmt: skip
SIDES = ("left", "right", "bilateral", "left basilar", "right upper lobe")
TEMPLATES = (
    "There is no {f}.",
    "No evidence of {f} or {g}.",
    "{S} {f} is again noted, measuring {n}.{m} cm.",
    "Possible {s} {f}; {g} cannot be excluded.",
    "Findings may represent {f} versus {g}.",
    "Interval resolution of the {s} {f}.",
    "The heart size is normal and the lungs are clear without {f}.",
    "Endotracheal tube terminates {n}.{m} cm above the carina.",
    "1. Moderate {s} {f}. 2. No {g}.",
    "Mild {f} with adjacent {g}, new since ___.",
)


def long_report(n_chars: int, seed: int, shape: str = "reports") -> str:
    """About ``n_chars`` of report text wrapped at 79 columns: FINDINGS/IMPRESSION pairs run
    together (``reports``), one IMPRESSION of many paragraphs (``one``) or no header (``plain``)."""
    rng = random.Random(seed)

    def paragraph() -> str:
        sentences = []
        for _ in range(rng.randint(2, 8)):
            f, g = rng.sample(FINDINGS, 2)
            s = rng.choice(SIDES)
            values = {
                "f": f,
                "g": g,
                "s": s,
                "S": s.capitalize(),
                "n": rng.randint(1, 9),
                "m": rng.randint(0, 9),
            }
            sentences.append(rng.choice(TEMPLATES).format(**values))
        return textwrap.fill(" ".join(sentences), 79)

    parts = {"reports": [], "one": ["IMPRESSION:"], "plain": []}[shape]
    size = 0
    while size < n_chars:
        block = (
            f"FINDINGS:\n{paragraph()}\n\nIMPRESSION:\n{paragraph()}" if shape == "reports" else paragraph()
        )
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts)


def _part(shape: str) -> pa.Table:
    """A partition: normal reports around a long one (and a report with no sentence)."""
    rows = [
        ("a", "FINDINGS: No pleural effusion.\n\nIMPRESSION: No acute process.", "mimic_cxr"),
        ("long", long_report(40_000, seed=1, shape=shape), "mimic_cxr"),
        ("b", "Heart size is mildly enlarged. Possible left basilar atelectasis.", "table"),
        ("dash", "_____", "table"),
        ("long2", long_report(25_000, seed=2, shape="plain"), "table"),
        ("c", "IMPRESSION:\n1. Small right pleural effusion.\n2. No pneumothorax.", "mimic_cxr"),
    ]
    ids, texts, sources = (list(column) for column in zip(*rows, strict=True))
    return pa.table({"report_id": ids, "text": texts, "source": sources})


def _run(reports: pa.Table, parse_config: ParseConfig, config: ExtractConfig, sentences: str) -> dict:
    load_engine(config.lexicon_dir, config.cache_size).clear_cache()  # read afresh, not from the memo
    parsed = parse({"reports": reports}, config=parse_config)
    sents = parsed["sentences"]
    if sentences == "shuffled":  # extract must put them back in reading order itself
        sents = sents.take(np.random.default_rng(0).permutation(sents.num_rows))
    elif sentences == "v1":  # sentences without section_idx: sections found by offset
        sents = sents.drop_columns(["section_idx"])
    tables = {"reports": reports, "sections": parsed["sections"], "sentences": sents}
    return {**{f"parse.{k}": v for k, v in parsed.items()}, **extract(tables, config=config)}


@pytest.mark.parametrize(
    ("shape", "parse_config", "config", "sentences"),
    [
        ("reports", ParseConfig(), ExtractConfig(), "parsed"),
        ("one", ParseConfig(), ExtractConfig(), "parsed"),
        ("one", ParseConfig(), ExtractConfig(), "shuffled"),
        ("reports", ParseConfig(), ExtractConfig(), "v1"),
        (
            "plain",
            ParseConfig(headerless="whole", labeled="findings_and_impression"),
            ExtractConfig(labeled_sections=("other", "impression"), no_finding_without_mentions=True),
            "parsed",
        ),
    ],
)
def test_windowed_reading_is_the_unwindowed_one(monkeypatch, shape, parse_config, config, sentences):
    reports = _part(shape)
    monkeypatch.setattr(windows, "WINDOW_CHARS", 0)
    whole = _run(reports, parse_config, config, sentences)
    monkeypatch.setattr(windows, "WINDOW_CHARS", 2_000)
    windowed = _run(reports, parse_config, config, sentences)

    assert whole.keys() == windowed.keys()
    for name, table in whole.items():
        assert table.schema == windowed[name].schema, name
        assert table.combine_chunks().equals(windowed[name].combine_chunks()), name
    # the windows did apply: one chunk per window on the long reports, one chunk without windows
    for name in ("parse.sentences", "parse.sections", "mentions"):
        assert whole[name].column(0).num_chunks == 1
        assert windowed[name].column(0).num_chunks > (1 if name == "parse.sections" else 10), name
    assert windowed["labels"].num_rows == 5 and windowed["rejects"].column("row_id").to_pylist() == ["dash"]

    # offsets are offsets into the whole report
    text_of = dict(zip(*(reports.column(c).to_pylist() for c in ("report_id", "text")), strict=True))
    for name in ("parse.sentences", "parse.sections", "mentions"):
        rows = windowed[name].select(["report_id", "start", "end", "text"]).to_pylist()
        assert all(text_of[r["report_id"]][r["start"] : r["end"]] == r["text"] for r in rows), name


def test_normal_reports_are_never_windowed():
    # MIMIC-CXR's longest report is about 12k characters; ingest rejects over 100k by default
    assert windows.WINDOW_CHARS >= 100_000
    reports = pa.table(
        {
            "report_id": [f"r{i}" for i in range(8)],
            "text": [long_report(12_000 + 1000 * i, seed=i) for i in range(8)],
            "source": ["mimic_cxr"] * 8,
        }
    )
    out = _run(reports, ParseConfig(), ExtractConfig(), "parsed")
    assert all(t.column(0).num_chunks == 1 for t in out.values() if t.num_rows)


def test_sentence_windows_cut_long_reports_only():
    reports = np.array([0, 0, 1, 1, 1, 1, 1, 2, 3, 3])
    lengths = np.array([5, 5, 40, 40, 40, 150, 10, 5, 30, 30])
    got = list(sentence_windows(reports, lengths, limit=100))
    # report 1 (280 chars) is cut at sentence ends, the 150-character sentence alone; report 3
    # (60) stays whole, with report 2, between the cuts
    assert got == [(0, 2), (2, 4), (4, 5), (5, 6), (6, 7), (7, 10)]
    assert list(sentence_windows(reports, lengths, limit=0)) == [(0, 10)]
    assert list(sentence_windows(reports, lengths, limit=1000)) == [(0, 10)]
    assert list(sentence_windows(np.array([], int), np.array([], int), limit=100)) == []


@given(
    st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2003\u3000ab."), max_size=40),
    st.integers(0, 600),
    st.integers(0, 600),
)
def test_strip_span_is_str_strip(body, pad_left, pad_right):
    text = " " * pad_left + body + "\u2003\n" * pad_right  # trailing blanks longer than one read
    for start, end in ((0, len(text)), (pad_left // 2, len(text) - pad_right)):
        seg = text[start:end]
        s, e = strip_span(text, start, end)
        if seg.strip():
            assert text[s:e] == seg.strip() and s == start + len(seg) - len(seg.lstrip())
        else:
            assert s == e == start


_MEMORY_CHILD = r"""
import gc, json, re, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import pyarrow as pa
from test_text_memory import long_report
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.nlp import load_engine
from pipeline.text.parse import ParseConfig, parse

def rss(field):
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

def reset():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak-RSS mark
        return rss("VmRSS"), "VmHWM"
    except OSError:  # no reset here: the peak so far (setup included) is the baseline
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"

def peak(how):
    return rss("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

load_engine()
# one-time costs (lazy imports, Arrow kernels and thread pools, allocator segments) are a
# worker's, not a report's: pay them on a smaller long report first
warm = pa.table({"report_id": ["warm"], "text": [long_report(300_000, seed=4, shape="one")], "source": ["x"]})
extract({"reports": warm, **parse({"reports": warm}, config=ParseConfig())}, config=ExtractConfig(cache_size=2_000))
del warm
def report(size):
    text = long_report(size, seed=3, shape="one")
    return pa.table({"report_id": ["huge"], "text": [text], "source": ["mimic_cxr"]}), len(text.encode())

reports, size = report(int(sys.argv[1]))
gc.collect()
before, how = reset()
parse({"reports": reports}, config=ParseConfig())
grown = {"parse": (peak(how) - before) / size}

reports, size = report(int(sys.argv[2]))
tables = {"reports": reports, **parse({"reports": reports}, config=ParseConfig())}
del tables["rejects"]
gc.collect()
before, how = reset()
out = extract(tables, config=ExtractConfig(cache_size=2_000))
grown["extract"] = (peak(how) - before) / size
print(json.dumps({"how": how, "mentions": out["mentions"].num_rows, **grown}))
"""


@pytest.mark.slow
def test_memory_stays_in_proportion_to_a_long_report():
    """Peak RSS growth, in a fresh process, of parse on one 6 MB report and extract on one 1.5 MB
    report, as multiples of the text's size: a memory bound, not a timing. Before windows this
    measure gave about 14x (parse) and 53x (extract); with them about 5.5x and 17-20x (extract's
    Arrow output alone is 5x the text)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads peak RSS from /proc (Linux)")
    # cache_size: the sentence memo is the worker's (bounded in entries whatever the report), and
    # a huge report fills it; kept small here so the figure is the report's own
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, "6000000", "1500000", str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["mentions"] > 30_000
    assert got["parse"] < 8, got
    assert got["extract"] < 30, got
