"""The ``extract`` stage function: sentences to finding mentions, CheXpert labels and fine findings.

Pure over one partition: ``extract({"reports", "sections", "sentences"}, config=...)`` returns
``{"mentions", "labels", "findings", "rejects"}`` conformed to schemas/. Each report with at least
one sentence gets exactly one ``labels`` row (all blank when nothing counted was mentioned); a
report with no sentence goes to ``rejects`` (``no_sentences``) instead, so the runner's accounting
(every report in labels or in rejects, never both) holds.

Which sections count: by default the sections the parse stage marked ``is_labeled`` (the section
a CheXpert labeler reads); ``labeled_sections`` names them explicitly instead (for Open-i-like
tables: findings and impression). Mentions in ``excluded_sections`` (indication, history...) never
count: "rule out pneumonia" asks a question. All mentions are kept, with ``in_labeled_section``.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.collector import collector_paused
from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.schemas import conform, load_schema
from pipeline.text.config import INDICATION_SECTIONS, ExtractConfig  # noqa: F401 (re-exported)
from pipeline.text.labels import findings_table, label_table, typed_table
from pipeline.text.lexicon import load_lexicon
from pipeline.text.nlp import MentionHit, TextEngine, load_engine
from pipeline.text.windows import sentence_windows

log = logging.getLogger(__name__)

STAGE = "extract"


_REQUIRED = {
    "reports": ("report_id",),
    "sentences": ("report_id", "section", "sentence_idx", "text", "start"),
    "sections": ("report_id", "section_idx", "section", "start", "end", "is_labeled"),
}


def _check_inputs(tables: Mapping[str, pa.Table], config: ExtractConfig) -> None:
    for name, columns in _REQUIRED.items():
        if name == "sections" and config.labeled_sections:
            continue
        if name not in tables:
            raise PipelineError("E_EXTRACT_INPUT", f"extract needs the {name!r} table; got {sorted(tables)}")
        missing = [c for c in columns if c not in tables[name].column_names]
        if missing:
            raise PipelineError(
                "E_EXTRACT_INPUT",
                f"extract: table {name!r} lacks columns {missing}. It must follow schemas/{name}.yaml; rerun the stage that writes it.",
            )


class _SectionFlags:
    """Whether each sentence's section counts toward labels, asked a window of sentences at a time.

    The sentence's own section is found by ``section_idx`` (sentences v2), else by its offset.
    """

    def __init__(self, sentence_columns: list[str], sections: pa.Table | None, config: ExtractConfig) -> None:
        self.excluded = set(config.excluded_sections)
        self.wanted: set[str] | None = None
        self.labeled_idx: set[tuple[str, int]] | None = None
        self.spans: dict[str, list[tuple[int, int, str, bool]]] = {}
        if config.labeled_sections or sections is None:
            self.wanted = set(config.labeled_sections)
            return
        if "section_idx" in sentence_columns and "section_idx" in sections.column_names:
            # only the labeled sections, a few per report, whatever the number of sections
            # ((report_id, section_idx) is the key of schemas/sections.yaml: unique)
            labeled = sections.filter(pc.fill_null(sections.column("is_labeled"), False))
            keys = (labeled.column(c).to_pylist() for c in ("report_id", "section_idx"))
            self.labeled_idx = set(zip(*keys, strict=True))
            return
        cols = [
            sections.column(c).to_pylist()
            for c in ("report_id", "section_idx", "start", "end", "section", "is_labeled")
        ]
        for rid, _, start, end, name, labeled in zip(*cols, strict=True):
            self.spans.setdefault(rid, []).append((start, end, name, bool(labeled)))
        for v in self.spans.values():
            v.sort()

    def __call__(self, sent: Mapping[str, list]) -> list[bool]:
        """One flag per sentence of ``sent`` (Python columns of some sentences)."""
        excluded = self.excluded
        names = sent["section"]
        if self.wanted is not None:
            return [n in self.wanted and n not in excluded for n in names]
        rids = sent["report_id"]
        if self.labeled_idx is not None:
            labeled_idx = self.labeled_idx
            return [
                (rid, idx) in labeled_idx and name not in excluded
                for rid, idx, name in zip(rids, sent["section_idx"], names, strict=True)
            ]
        flags = []
        for rid, start, name in zip(rids, sent["start"], names, strict=True):
            secs = self.spans.get(rid, [])
            # the section instance holding the sentence (a report may have two "impression" sections)
            k = bisect.bisect_right(secs, (start, float("inf"))) - 1
            if k >= 0 and secs[k][0] <= start < max(secs[k][1], secs[k][0] + 1) and secs[k][2] == name:
                labeled = secs[k][3]
            else:
                labeled = any(s[3] for s in secs if s[2] == name)
            flags.append(labeled and name not in excluded)
        return flags


def _reading_order(sentences: pa.Table, report_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``sentences`` whose report is in ``report_ids``, in reading order (by report
    as listed, then by ``sentence_idx``; a stable sort), and each such row's report rank."""
    position = {rid: i for i, rid in enumerate(report_ids)}  # a repeated id: its last place
    ranked = pa.array(sorted(position, key=position.__getitem__), pa.string())
    rank = pc.fill_null(pc.index_in(sentences.column("report_id"), value_set=ranked), -1)
    rank = np.asarray(rank.to_numpy(), dtype=np.int64)
    rows = np.flatnonzero(rank >= 0)
    sentence_idx = np.asarray(sentences.column("sentence_idx").to_numpy(), dtype=np.int64)[rows]
    key = (rank[rows] << 32) + (sentence_idx + 2**31)  # sentence_idx is an int32
    rows = rows[np.argsort(key, kind="stable")]
    return rows, rank[rows]


_MODIFIERS_TYPE = load_schema("mentions").arrow().field("modifiers").type
# Mention columns copied as they are from the engine's hits (offsets are made report-relative).
_HIT_FIELDS = (
    "text",
    "finding",
    "observation",
    "status",
    "cue",
    "rule",
    "anatomy",
    "laterality",
    "severity",
    "size",
    "temporal",
)


def extract(tables: Mapping[str, pa.Table], *, config: ExtractConfig) -> dict[str, pa.Table]:
    """Mentions, labels and findings of one partition.

    ``tables``: ``reports`` (report_id), ``sentences`` (schemas/sentences.yaml; v1 without
    ``section_idx`` is read too) and ``sections`` (schemas/sections.yaml; unused when
    ``config.labeled_sections`` is set). Never mutates its
    inputs. Raises PipelineError(E_EXTRACT_INPUT) for a missing table or column, and
    PipelineError(E_LEXICON_INVALID) for a bad lexicon.

    The sentences are read in one piece, or, when the partition holds a report longer than a
    window, a window at a time (:mod:`pipeline.text.windows`): ``mentions`` then has one chunk
    per window, and the same rows.
    """
    _check_inputs(tables, config)
    with collector_paused():
        return _extract(tables, config)


def _extract(tables: Mapping[str, pa.Table], config: ExtractConfig) -> dict[str, pa.Table]:
    lexicon = load_lexicon(config.lexicon_dir)
    engine = load_engine(lexicon.source, config.cache_size)
    report_ids = tables["reports"].column("report_id").to_pylist()
    sentences = tables["sentences"]
    columns = [*_REQUIRED["sentences"], *(["section_idx"] if "section_idx" in sentences.column_names else [])]
    sentences = sentences.select(columns)
    labeled = _SectionFlags(columns, tables.get("sections"), config)

    rows, rank = _reading_order(sentences, report_ids)
    if len(rows) != sentences.num_rows:
        log.warning(
            "extract: %d sentences belong to no report of this partition; ignored",
            sentences.num_rows - len(rows),
        )
    in_order = len(rows) == sentences.num_rows and bool(np.all(rows == np.arange(len(rows))))
    lengths = np.asarray(pc.utf8_length(sentences.column("text")).to_numpy(), dtype=np.int64)[rows]
    chunks: list[pa.Table] = []
    with_sentences: set[str] = set()
    for a, b in list(sentence_windows(rank, lengths)) or [(0, 0)]:
        window = sentences.slice(a, b - a) if in_order else sentences.take(rows[a:b])
        sent = {c: window.column(c).to_pylist() for c in columns}
        with_sentences.update(sent["report_id"])
        chunks.append(_mentions(window, sent, labeled(sent), engine))
    mentions = chunks[0] if len(chunks) == 1 else pa.concat_tables(chunks)

    labeled_ids = [rid for rid in report_ids if rid in with_sentences]
    rejected = [
        (rid, "no_sentences", "the parse stage found no sentence in this report")
        for rid in report_ids
        if rid not in with_sentences
    ]
    non_blocking = [f.id for f in lexicon.findings.values() if not f.blocks_no_finding]
    labels = label_table(
        mentions,
        labeled_ids,
        non_blocking=non_blocking,
        no_finding_without_mentions=config.no_finding_without_mentions,
    )
    findings = findings_table(mentions, {f.id: f.observation for f in lexicon.findings.values()})
    return {
        "mentions": mentions,
        "labels": labels,
        "findings": findings,
        "rejects": conform(reject_table(STAGE, "labels", rejected), "rejects"),
    }


def _mentions(window: pa.Table, sent: Mapping[str, list], flags: list[bool], engine: TextEngine) -> pa.Table:
    """The ``mentions`` of some sentences (``window``, in reading order, and its ``sent`` Python
    columns; ``flags``: whether each one's section counts), conformed to the schema."""
    hits = engine.analyse(sent["text"])
    # Column by column: the sentence of each hit (an Arrow take), then each field over all hits.
    at = pa.array(np.repeat(np.arange(len(hits), dtype=np.int64), list(map(len, hits))))
    flat = [h for sentence_hits in hits for h in sentence_hits]
    field = dict(
        zip(
            MentionHit._fields,
            zip(*flat, strict=True) if flat else [()] * len(MentionHit._fields),
            strict=True,
        )
    )
    cols: dict[str, list | tuple | pa.Array] = {
        name: window.column(name).take(at).combine_chunks()
        for name in ("report_id", "section", "sentence_idx")
    }
    base = window.column("start").take(at).combine_chunks().cast(pa.int64())  # the sentence's offset
    for name in ("start", "end", "cue_start", "cue_end"):
        cols[name] = pc.add(base, pa.array(field[name], pa.int64()))
    for name in _HIT_FIELDS:
        cols[name] = field[name]
    cols["modifiers"] = _modifiers(base, field["modifiers"])
    cols["in_labeled_section"] = pa.array(flags, pa.bool_()).take(at)
    return typed_table(cols, "mentions")


def _modifiers(base: pa.Array, per_hit: tuple[tuple[tuple[str, str, int, int], ...], ...]) -> pa.Array:
    """``mentions.modifiers`` from each hit's (kind, value, start, end) words, offsets moved by
    ``base`` (the hit's sentence start in the report): built as Arrow arrays, not a dict per word."""
    lengths = list(map(len, per_hit))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    words = [w for mods in per_hit for w in mods]
    kinds, values, starts, ends = zip(*words, strict=True) if words else [()] * 4
    shift = np.repeat(np.asarray(base.to_numpy(zero_copy_only=False), dtype=np.int64), lengths)
    columns = (
        kinds,
        values,
        np.asarray(starts, dtype=np.int64) + shift,
        np.asarray(ends, dtype=np.int64) + shift,
    )
    target = _MODIFIERS_TYPE
    struct = pa.StructArray.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, target.value_type, strict=True)],
        fields=list(target.value_type),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct, type=target)
