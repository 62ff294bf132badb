"""A drop-in for the CheXpert labeler and CheXbert, on our text engine; and ``label_reports``.

Command line (the CheXpert labeler's own form works unchanged)::

    python -m pipeline.label --reports_path reports.csv --output_path labeled_reports.csv
    python -m pipeline.label -d impressions.csv -o out_dir          # CheXbert's form
    python -m pipeline.label export --run runs/mimic --to labeled_reports.csv --findings findings.csv

Input: the labeler's CSV (one column of report texts, no header, a text quoted when it holds a
comma or a newline; blank lines are skipped, as pandas does for the labeler) or CheXbert's (a
header with a column named exactly ``Report Impression``; other columns are ignored). Output: the
labeler's ``labeled_reports.csv`` byte for byte in format: a header ``Reports`` then the 14
observations in the labeler's order, one row per input report in input order, the text written
back as read, values ``1.0`` / ``0.0`` / ``-1.0`` or empty, quoted only where needed, ``\\n``
line ends. ``--format chexbert`` (the default of the ``-d/-o`` form) writes CheXbert's own layout
instead: ``Report Impression`` then CheXbert's order (Lung Opacity before Lung Lesion, No Finding
last), into ``DIR/labeled_reports.csv``.

What is labelled (``--sections``):

* ``whole`` (default): every input cell is the text to label, as the labeler treats it. A cell
  with headers is still split into sections, and every section counts except the indication-like
  ones (``INDICATION: rule out pneumonia`` asks a question; extract's ``excluded_sections``). A
  headerless cell is read whole, every paragraph of it.
* ``impression``: the engine's own choice, MIT-LCP's (the one behind MIMIC-CXR's official labels):
  the last impression, else the last findings, else the whole of a headerless text.

Where the readings differ from the labeler's, they are the engine's deliberate choices (see
schemas/labels.yaml): a report with no counted mention is all blank where the labeler writes
No Finding 1.0 (``--no-finding-without-mentions`` gives the labeler's 1.0). Empty or
whitespace-only cells, and cells the ingest stage would reject (binary junk, longer than
``ingest.max_chars``), keep their row with every label blank. (The labeler itself crashes on an
empty quoted cell and writes No Finding 1.0 for a whitespace one.)

How it runs: fewer than ``--cluster-threshold`` reports (default 10,000) are labelled in this
process, straight through the parse and extract stage functions (600 to 1,000 reports/s on one core
once the engine is loaded: bench/label.py). Larger inputs, on a machine of at least 4 cores, run
the real runner (ingest with the table adapter, parse, extract: ``dag=labels`` without its
agreement stage) on a LocalCluster of one worker per core in a temporary folder, with progress
bars. The runner path costs more CPU per report (ingest, Parquet I/O, schema checks) plus a few
seconds per worker to start and load the engine: 20,000 Open-i reports took 45 s of CPU on 2
workers against 17 s in one process, so on 2 cores it never catches up with one in-process core
and is used only when asked for. ``--workers 1`` always stays in process;
``--workers N`` (N > 1) always uses a LocalCluster of N workers; ``--address tcp://host:8786``
makes the cluster path (above the threshold, whatever the local cores) use an existing
Dask scheduler. Bad inputs exit 2 with ``error [E_LABEL_INPUT_...]`` and the fix.

``export`` writes a finished run's ``labels`` in the same CSV format (Reports = the report's
text from the run's ``reports``, rows in the run's report order, reports without a labels row
blank; ``--ids`` puts ``report_id`` first) and its ``findings`` as a tidy CSV (the columns of
schemas/findings.yaml).

Python: ``from pipeline import label_reports; label_reports(["No pneumothorax."])`` returns a
pandas DataFrame, one row per report (a Series keeps its index): ``Reports``, the 14 values
(NaN for blank) and, per observation, ``"<observation> evidence"``: the deciding mentions as
dicts (``sentence``, ``mention``, ``finding``, ``status``, ``cue``, ``rule``).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import gzip
import io
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.schemas import chexpert_observations

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

REPORTS = "Reports"
REPORT_IMPRESSION = "Report Impression"
# The CheXpert labeler's column order (constants.CATEGORIES; its labeled_reports.csv) is the order
# of schemas/labels.yaml: the test against the labeler's own file checks it.
LABELER_OBSERVATIONS: tuple[str, ...] = chexpert_observations()
# CheXbert's (src/constants.py CONDITIONS): its labeled_reports.csv puts these after Report Impression.
CHEXBERT_OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "labeler": (REPORTS, LABELER_OBSERVATIONS),
    "chexbert": (REPORT_IMPRESSION, CHEXBERT_OBSERVATIONS),
}
SECTION_POLICIES = ("whole", "impression")
CLUSTER_THRESHOLD = 10_000
# The runner path spends more CPU per report than the in-process one (ingest, Parquet I/O, schema
# checks) plus seconds per worker (20,000 Open-i reports: 45 s of CPU on 2 workers, 17 s in one
# process): with 2 workers it never catches up with one core, so the automatic choice needs 4.
MIN_CLUSTER_CORES = 4
CHUNK = 1_000  # reports per in-process parse + extract call (bounds memory, paces the progress bar)
_VALUE_TEXT = {1.0: "1.0", 0.0: "0.0", -1.0: "-1.0"}

Labels = dict[str, float | None]  # observation -> 1.0 / 0.0 / -1.0 / None


@dataclass(frozen=True)
class LabelOptions:
    """How reports are read. ``sections``: ``whole`` or ``impression`` (module docstring);
    ``no_finding_without_mentions``: No Finding 1.0 for a report with no counted mention;
    ``cache_size``: extract's per-process sentence memo (0 turns it off: bench/label.py)."""

    sections: str = "whole"
    no_finding_without_mentions: bool = False
    cache_size: int = 100_000

    def __post_init__(self) -> None:
        if self.sections not in SECTION_POLICIES:
            raise PipelineError(
                "E_CONFIG_VALUE",
                f"sections={self.sections!r}." + did_you_mean(self.sections, SECTION_POLICIES),
            )


# -- reading the labeler's and CheXbert's CSVs ------------------------------------------------------


@dataclass(frozen=True)
class ReportsFile:
    """The report texts of an input CSV, in order, and which tool's format it was."""

    texts: list[str]
    kind: str  # "labeler" (headerless, one column) or "chexbert" (a Report Impression column)


def _fix_hint() -> str:
    return (
        "Give the CheXpert labeler's input (one column of report texts, no header; quote a text "
        f"holding commas or newlines) or CheXbert's (a header with a column named exactly {REPORT_IMPRESSION!r})."
    )


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # as ingest: UTF-8, else Windows-1252


def read_reports(path: str | os.PathLike[str]) -> ReportsFile:
    """Read the report texts of a labeler or CheXbert CSV (``.gz`` too).

    A first row holding a ``Report Impression`` field makes it CheXbert's (that column is read, the
    rest ignored); otherwise every row must have exactly one field (the labeler's). Blank lines are
    skipped, as the labeler's pandas reader skips them. Raises PipelineError:
    E_LABEL_INPUT_MISSING (no such file), E_LABEL_INPUT_EMPTY (no report), E_LABEL_INPUT_COLUMNS
    (neither format), each naming the fix.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise PipelineError("E_LABEL_INPUT_MISSING", f"{p} {what}. {_fix_hint()}")
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    csv.field_size_limit(2**31 - 1)  # reports are longer than csv's 128 KiB default allows at worst
    try:
        rows = [row for row in csv.reader(io.StringIO(_decode(raw), newline="")) if row]
    except csv.Error as exc:
        raise PipelineError(
            "E_LABEL_INPUT_COLUMNS", f"{p} is not a readable CSV ({exc}). {_fix_hint()}"
        ) from exc
    if not rows:
        raise PipelineError("E_LABEL_INPUT_EMPTY", f"{p} holds no report (the file is empty). {_fix_hint()}")
    header = rows[0]
    if REPORT_IMPRESSION in header:
        col = header.index(REPORT_IMPRESSION)
        texts = [row[col] if col < len(row) else "" for row in rows[1:]]
        if not texts:
            raise PipelineError(
                "E_LABEL_INPUT_EMPTY",
                f"{p} has a {REPORT_IMPRESSION!r} header but no report under it. Add one row per report.",
            )
        return ReportsFile(texts, "chexbert")
    for n, row in enumerate(rows, 1):
        if len(row) != 1:
            hint = ""
            if n == 1:
                hint = f" Its first row: {', '.join(repr(c) for c in header[:8])}{', ...' if len(header) > 8 else ''}."
                close = difflib.get_close_matches(REPORT_IMPRESSION, header, n=1, cutoff=0.6)
                if close:
                    hint += f" If {close[0]!r} holds the reports, rename it {REPORT_IMPRESSION!r}."
            raise PipelineError(
                "E_LABEL_INPUT_COLUMNS",
                f"{p}: row {n} has {len(row)} fields, and no column is named {REPORT_IMPRESSION!r}.{hint} "
                + _fix_hint(),
            )
    return ReportsFile([row[0] for row in rows], "labeler")


# -- writing --------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    if value is None or value != value:  # None or NaN: blank, as pandas writes NaN
        return ""
    return _VALUE_TEXT.get(float(value), repr(float(value)))


def write_labels_csv(
    path: str | os.PathLike[str],
    texts: Sequence[str],
    labels: Sequence[Labels],
    *,
    layout: str = "labeler",
    ids: Sequence[str] | None = None,
) -> None:
    """Write ``labeled_reports.csv``: the labeler's layout (or CheXbert's), atomically.

    The same writer pandas' ``to_csv`` (the labeler's and CheXbert's) uses: ``csv.writer`` with
    minimal quoting and ``\\n`` line ends. ``ids`` adds a leading ``report_id`` column.
    Raises PipelineError(E_LABEL_OUTPUT) when the file cannot be written.
    """
    first, observations = LAYOUTS[layout]
    head = (["report_id"] if ids is not None else []) + [first, *observations]

    def rows() -> Iterable[list[str]]:
        yield head
        for i, (text, row) in enumerate(zip(texts, labels, strict=True)):
            cells = [text, *(_cell(row.get(obs)) for obs in observations)]
            yield ([ids[i]] if ids is not None else []) + cells

    _write_csv(path, rows())


def _write_csv(path: str | os.PathLike[str], rows: Iterable[Sequence[str]]) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PipelineError(
            "E_LABEL_OUTPUT",
            f"cannot write {target}: {exc.strerror or exc}. Check the folder exists and is writable.",
        ) from exc


# -- the engine's configuration -------------------------------------------------------------------


def _whole_sections() -> tuple[str, ...]:
    """Every section name the parse stage can give with ``unknown_headers="ignore"``, less the
    indication-like ones extract never counts."""
    from pipeline.text.extract import ExtractConfig
    from pipeline.text.sections import LAST_PARAGRAPH, OTHER, load_headers

    names = set(load_headers().spellings.values()) | {OTHER, LAST_PARAGRAPH}
    return tuple(sorted(names - set(ExtractConfig().excluded_sections)))


def stage_settings(options: LabelOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(parse, extract)`` config values for ``options``, shared by both execution paths.

    ``whole``: unlisted upper-case headers stay body text (they would open a section that counts
    anyway) and extract counts every section name parse can give except the excluded ones.
    """
    parse: dict[str, Any] = {"headerless": "whole"}  # a headerless cell is read whole, every paragraph
    extract: dict[str, Any] = {
        "no_finding_without_mentions": options.no_finding_without_mentions,
        "cache_size": options.cache_size,
    }
    if options.sections == "whole":
        parse["unknown_headers"] = "ignore"
        extract["labeled_sections"] = _whole_sections()
    return parse, extract


def _overrides(options: LabelOptions) -> list[str]:
    parse, extract = stage_settings(options)
    out = []
    for stage, values in (("parse", parse), ("extract", extract)):
        for key, value in values.items():
            if isinstance(value, tuple):
                text = "[" + ",".join(value) + "]"
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            out.append(f"stages.{stage}.{key}={text}")
    return out


def _usable(text: str, max_chars: int) -> str | None:
    """The text the engine reads (line ends normalised, as ingest does), or None for a row whose
    labels stay blank (empty, whitespace, junk, longer than ``max_chars``: what ingest rejects)."""
    from pipeline.ingest.text import check_text, decode_text

    decoded = decode_text(text)
    return None if check_text(decoded, max_chars) else decoded


# -- in process -----------------------------------------------------------------------------------


@dataclass
class LabelResult:
    """Labels of each input row, in input order, and (when asked) their deciding mentions."""

    labels: list[Labels]
    evidence: list[dict[str, list[dict[str, Any]]]] | None


def label_in_process(
    texts: Sequence[str],
    options: LabelOptions,
    *,
    evidence: bool = False,
    advance: Callable[[int], None] | None = None,
) -> LabelResult:
    """Label ``texts`` in this process with the parse and extract stage functions, ``CHUNK`` at a
    time; ``advance(n)`` is called after each chunk. Row i of the result is ``texts[i]``."""
    import pyarrow as pa

    from pipeline.ingest.config import IngestConfig
    from pipeline.text.extract import ExtractConfig, extract
    from pipeline.text.parse import ParseConfig, parse

    parse_values, extract_values = stage_settings(options)
    parse_config = ParseConfig(**parse_values)
    extract_config = ExtractConfig(**extract_values)
    max_chars = IngestConfig().max_chars  # the cluster path's ingest rejects longer reports too
    blank: Labels = dict.fromkeys(LABELER_OBSERVATIONS)
    labels: list[Labels] = [blank] * len(texts)
    proofs: list[dict[str, list[dict[str, Any]]]] | None = [{} for _ in texts] if evidence else None
    for lo in range(0, len(texts), CHUNK):
        hi = min(lo + CHUNK, len(texts))
        rows = [(i, t) for i in range(lo, hi) if (t := _usable(texts[i], max_chars)) is not None]
        if rows:
            reports = pa.table(
                {"report_id": [str(i) for i, _ in rows], "text": [t for _, t in rows]},
                schema=pa.schema([("report_id", pa.string()), ("text", pa.string())]),
            )
            parsed = parse({"reports": reports}, config=parse_config)
            out = extract({"reports": reports, **parsed}, config=extract_config)
            table = out["labels"]
            columns = {c: table.column(c).to_pylist() for c in ("report_id", *LABELER_OBSERVATIONS)}
            for k, rid in enumerate(columns["report_id"]):
                labels[int(rid)] = {obs: columns[obs][k] for obs in LABELER_OBSERVATIONS}
            if proofs is not None:
                _collect_evidence(proofs, table, parsed["sentences"], out["mentions"])
        if advance is not None:
            advance(hi - lo)
    return LabelResult(labels, proofs)


def _collect_evidence(
    proofs: list[dict[str, list[dict[str, Any]]]], labels: pa.Table, sentences: pa.Table, mentions: pa.Table
) -> None:
    """Each label's deciding mentions (labels.provenance) with their sentence and matched text."""
    sentence_of = {
        (rid, idx): text
        for rid, idx, text in zip(
            *(sentences.column(c).to_pylist() for c in ("report_id", "sentence_idx", "text")), strict=True
        )
    }
    span_of = {
        (rid, idx, start, finding): text
        for rid, idx, start, finding, text in zip(
            *(
                mentions.column(c).to_pylist()
                for c in ("report_id", "sentence_idx", "start", "finding", "text")
            ),
            strict=True,
        )
    }
    for rid, provenance in zip(
        labels.column("report_id").to_pylist(), labels.column("provenance").to_pylist(), strict=True
    ):
        by_obs = proofs[int(rid)]
        for p in provenance:
            by_obs.setdefault(p["observation"], []).append(
                {
                    "sentence": sentence_of.get((rid, p["sentence_idx"])),
                    "mention": span_of.get((rid, p["sentence_idx"], p["start"], p["finding"])),
                    "finding": p["finding"],
                    "status": p["status"],
                    "cue": p["cue"],
                    "rule": p["rule"],
                }
            )


# -- on a cluster, through the runner ----------------------------------------------------------------


def label_on_cluster(
    texts: Sequence[str],
    options: LabelOptions,
    *,
    workers: int,
    address: str | None = None,
    show_progress: bool = False,
) -> LabelResult:
    """Label ``texts`` through the real runner (ingest with the table adapter, parse, extract) on
    a LocalCluster of ``workers`` processes (or the scheduler at ``address``), in a temporary
    run folder removed afterwards. Rows that ingest rejects come back blank."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console

    from pipeline.core.config import compose_run
    from pipeline.core.dag import build_dag
    from pipeline.core.io import read_dataset
    from pipeline.core.registry import auto_part_size
    from pipeline.core.runner import Runner, dask_client
    from pipeline.run import RichProgress

    part_size = auto_part_size(len(texts), workers)
    blank: Labels = dict.fromkeys(LABELER_OBSERVATIONS)
    labels: list[Labels] = [blank] * len(texts)
    with tempfile.TemporaryDirectory(prefix="clip2clinic-label-") as tmp:
        source = os.path.join(tmp, "reports.parquet")
        pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": list(texts)}), source)
        out = os.path.join(tmp, "run")
        cfg = compose_run(
            [
                "dataset=table",
                f"dataset.path={source}",
                "dataset.id_column=id",
                "dataset.text_column=text",
                f"out={out}",
                f"cluster.n_workers={workers}",
                *([f"cluster.address={address}"] if address else []),
                f"stages.ingest.part_size={part_size}",
                *_overrides(options),
            ]
        )
        # dag=labels less its agreement stage (there are no official labels to agree with).
        dag = build_dag("labels", ["ingest", "parse", "extract"], where="pipeline.label")
        configs = {s.name: cfg.stage_config(s.name) for s in dag.stages}
        console = Console(stderr=True, soft_wrap=True)
        with dask_client(cfg.cluster) as client:
            if show_progress:
                with RichProgress(console) as progress:
                    Runner(out, client, progress=progress).run_dag(dag, configs)
            else:
                Runner(out, client).run_dag(dag, configs)
        table = read_dataset(out, "labels", columns=["report_id", *LABELER_OBSERVATIONS])
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    for k, rid in enumerate(columns["report_id"]):
        labels[int(rid)] = {obs: columns[obs][k] for obs in LABELER_OBSERVATIONS}
    return LabelResult(labels, None)


# -- the Python API --------------------------------------------------------------------------------


def label_reports(
    reports: str | Iterable[str | None] | pd.Series,
    *,
    sections: str = "whole",
    evidence: bool = True,
    no_finding_without_mentions: bool = False,
) -> pd.DataFrame:
    """Label report texts in this process, as the CLI does; one row per report, in order.

    ``reports``: one text, a list of texts, or a pandas Series (its index is kept); None or NaN
    reads as an empty report (all blank). Columns: ``Reports`` (the text), the 14 observations in
    the labeler's order (1.0 / 0.0 / -1.0, NaN for blank) and, with ``evidence``, one
    ``"<observation> evidence"`` column per observation: a list of the deciding mentions, each a
    dict ``sentence, mention, finding, status, cue, rule`` (empty where the value is blank; for
    No Finding 1.0, the non-positive mentions that were read). ``sections``: ``"whole"`` or
    ``"impression"`` (see the module docstring). Raises PipelineError(E_CONFIG_VALUE) for an
    unknown ``sections``.
    """
    import pandas as pd

    options = LabelOptions(sections, no_finding_without_mentions)
    if isinstance(reports, str):
        reports = [reports]
    index = reports.index if isinstance(reports, pd.Series) else None
    texts = ["" if not isinstance(t, str) else t for t in reports]
    result = label_in_process(texts, options, evidence=evidence)
    data: dict[str, Any] = {REPORTS: texts}
    for obs in LABELER_OBSERVATIONS:
        data[obs] = [math.nan if row[obs] is None else float(row[obs]) for row in result.labels]
    if result.evidence is not None:
        for obs in LABELER_OBSERVATIONS:
            data[f"{obs} evidence"] = [proof.get(obs, []) for proof in result.evidence]
    return pd.DataFrame(data, index=index)


# -- export of a run ----------------------------------------------------------------------------------


def _complete(run: str, dataset: str) -> None:
    from pipeline.core.io import Store

    store = Store(run)
    manifest = store.read_json(store.manifest_path(dataset))
    if not manifest or not manifest.get("complete"):
        raise PipelineError(
            "E_INPUT_MISSING",
            f"no complete {dataset!r} dataset under {run}. Point --run at the `out` folder of a run "
            "of dag=labels (or any DAG with the extract stage) that finished.",
        )


def export_labels(run: str, to: str, *, layout: str = "labeler", ids: bool = False) -> int:
    """Write a run's ``labels`` as ``labeled_reports.csv`` (Reports = each report's text, in the
    run's report order; a report without a labels row is blank). Returns the rows written.
    Raises PipelineError(E_INPUT_MISSING) when the run lacks complete reports or labels."""
    from pipeline.core.io import read_dataset

    _complete(run, "reports")
    _complete(run, "labels")
    reports = read_dataset(run, "reports", columns=["report_id", "text"])
    table = read_dataset(run, "labels", columns=["report_id", *LABELER_OBSERVATIONS])
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    by_id = {
        rid: {obs: columns[obs][k] for obs in LABELER_OBSERVATIONS}
        for k, rid in enumerate(columns["report_id"])
    }
    report_ids = reports.column("report_id").to_pylist()
    blank: Labels = dict.fromkeys(LABELER_OBSERVATIONS)
    write_labels_csv(
        to,
        reports.column("text").to_pylist(),
        [by_id.get(rid, blank) for rid in report_ids],
        layout=layout,
        ids=report_ids if ids else None,
    )
    return len(report_ids)


def export_findings(run: str, to: str) -> int:
    """Write a run's ``findings`` as a tidy CSV (schemas/findings.yaml's columns, one row per
    report and fine finding; null as empty). Returns the rows written."""
    from pipeline.core.io import read_dataset
    from pipeline.core.schemas import load_schema

    _complete(run, "findings")
    names = [f.name for f in load_schema("findings").arrow()]
    table = read_dataset(run, "findings", columns=names)
    columns = [table.column(c).to_pylist() for c in names]

    def rows() -> Iterable[list[str]]:
        yield names
        for values in zip(*columns, strict=True):
            yield ["" if v is None else str(v) for v in values]

    _write_csv(to, rows())
    return table.num_rows


# -- command line ---------------------------------------------------------------------------------------


def _label_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.label",
        description="Label radiology reports in the CheXpert labeler's format (a drop-in for its "
        "label.py and for CheXbert's). `python -m pipeline.label export --help` for exports of a run.",
    )
    io_ = parser.add_argument_group("input and output (the labeler's names, or CheXbert's -d/-o)")
    io_.add_argument("--reports_path", "--reports-path", help="CSV of reports: the labeler's or CheXbert's")
    io_.add_argument(
        "--output_path",
        "--output-path",
        help="output CSV (default labeled_reports.csv, as the labeler)",
    )
    io_.add_argument("-d", "--data", help="CheXbert's form: CSV with a 'Report Impression' column")
    io_.add_argument("-o", "--output_dir", help="CheXbert's form: writes OUTPUT_DIR/labeled_reports.csv")
    io_.add_argument("-c", "--checkpoint", help="CheXbert's form: accepted and ignored (no model is used)")
    parser.add_argument(
        "--format",
        choices=tuple(LAYOUTS),
        help="output layout: labeler (Reports + its order; default) or chexbert (default with -d/-o)",
    )
    parser.add_argument(
        "--sections", choices=SECTION_POLICIES, default="whole", help="what is labelled (default whole)"
    )
    parser.add_argument(
        "--no-finding-without-mentions",
        action="store_true",
        help="No Finding 1.0 for a report with no counted mention (the labeler's behaviour; default blank)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: automatic (default); 1: always in this process; N>1: always a LocalCluster of N workers",
    )
    parser.add_argument(
        "--cluster-threshold",
        type=int,
        default=CLUSTER_THRESHOLD,
        help=f"with --workers 0, inputs of at least this many reports use a LocalCluster when there are "
        f"{MIN_CLUSTER_CORES}+ cores, or the --address scheduler (default {CLUSTER_THRESHOLD:,})",
    )
    parser.add_argument("--address", help="an existing Dask scheduler (tcp://host:8786) for the cluster path")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="progress bars even when stderr is not a terminal"
    )
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.label export",
        description="Export a finished run's labels (labeler CSV) and findings (tidy CSV).",
    )
    parser.add_argument("--run", required=True, help="the run's out folder")
    parser.add_argument("--to", help="labels in the labeler's format, e.g. labeled_reports.csv")
    parser.add_argument("--findings", help="findings as a tidy CSV, e.g. findings.csv")
    parser.add_argument("--format", choices=tuple(LAYOUTS), default="labeler", help="layout of --to")
    parser.add_argument(
        "--ids", action="store_true", help="put report_id first in --to (not in the labeler's format)"
    )
    return parser


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _run_label(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    if args.data or args.output_dir:
        if args.reports_path or args.output_path:
            parser.error(
                "give either --reports_path/--output_path (the labeler's) or -d/-o (CheXbert's), not both"
            )
        if not args.data or not args.output_dir:
            parser.error("CheXbert's form needs both -d CSV and -o OUTPUT_DIR")
        source, layout = args.data, args.format or "chexbert"
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        target = os.path.join(args.output_dir, "labeled_reports.csv")
    else:
        if not args.reports_path:
            parser.error("--reports_path is required (or CheXbert's -d CSV -o OUTPUT_DIR)")
        source, layout = args.reports_path, args.format or "labeler"
        target = args.output_path or "labeled_reports.csv"
    if args.workers < 0 or args.cluster_threshold < 1:
        parser.error("--workers must be >= 0 and --cluster-threshold >= 1")
    options = LabelOptions(args.sections, args.no_finding_without_mentions)
    reports = read_reports(source)
    n = len(reports.texts)
    # --workers 0: by size, where a cluster can win; 1: here; N > 1: a LocalCluster of N.
    on_cluster = args.workers > 1 or (
        args.workers == 0
        and n >= args.cluster_threshold
        and (args.address or _cpu_count() >= MIN_CLUSTER_CORES)
    )
    show = args.verbose or err.is_terminal
    started = time.perf_counter()
    if on_cluster:
        workers = args.workers or _cpu_count()
        where = f"the scheduler at {args.address}" if args.address else f"a LocalCluster of {workers} workers"
        err.print(f"labelling {n:,} reports on {where}", highlight=False)
        import distributed  # noqa: F401  (sets its loggers up when imported: quiet them after that)

        logging.getLogger("distributed").setLevel(logging.ERROR)
        result = label_on_cluster(
            reports.texts, options, workers=workers, address=args.address, show_progress=show
        )
    else:
        from pipeline.text.nlp import load_engine

        load_engine()  # timed apart: a one-off cost, not a per-report one
        loaded = time.perf_counter() - started
        err.print(
            f"engine loaded in {loaded:.1f} s; labelling {n:,} reports in this process", highlight=False
        )
        started += loaded
        result = _in_process_with_progress(reports.texts, options, err, show)
    write_labels_csv(target, reports.texts, result.labels, layout=layout)
    seconds = time.perf_counter() - started
    err.print(
        f"labelled {n:,} reports ({reports.kind} CSV) in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):,.0f} reports/s) -> {target}",
        highlight=False,
    )
    return 0


def _in_process_with_progress(
    texts: Sequence[str], options: LabelOptions, err: Any, show: bool
) -> LabelResult:
    if not show:
        return label_in_process(texts, options)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as bars:
        task = bars.add_task("labelling", total=len(texts))
        return label_in_process(texts, options, advance=lambda k: bars.advance(task, k))


def _run_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    if not args.to and not args.findings:
        parser.error("give --to labeled_reports.csv and/or --findings findings.csv")
    err = Console(stderr=True, soft_wrap=True)
    if args.to:
        n = export_labels(args.run, args.to, layout=args.format, ids=args.ids)
        err.print(f"{n:,} reports' labels -> {args.to}", highlight=False)
    if args.findings:
        n = export_findings(args.run, args.findings)
        err.print(f"{n:,} findings -> {args.findings}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 for a bad input or usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args[:1] == ["export"]:
        parser, run = _export_parser(), _run_export
        args = args[1:]
    else:
        parser, run = _label_parser(), _run_label
    try:
        return run(parser.parse_args(args), parser)
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0), as a return code
        return exc.code if isinstance(exc.code, int) else 2
    except PipelineError as exc:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error[/] [{exc.code}] {exc.message}", highlight=False
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
