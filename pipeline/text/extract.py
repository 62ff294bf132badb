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
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.registry import CONTENT
from pipeline.core.schemas import conform
from pipeline.text.labels import findings_table, label_table, typed_table
from pipeline.text.lexicon import load_lexicon
from pipeline.text.nlp import load_engine

log = logging.getLogger(__name__)

STAGE = "extract"
INDICATION_SECTIONS: tuple[str, ...] = (
    "indication",
    "history",
    "clinical_history",
    "reason",
    "reason_for_exam",
    "reason_for_study",
    "clinical_information",
    "clinical_indication",
)


@dataclass(frozen=True)
class ExtractConfig:
    """Config of the extract stage.

    labeled_sections: section names whose mentions count toward labels; empty (default) means
        the sections the parse stage marked ``is_labeled``.
    excluded_sections: section names that never count, whatever the above says.
    no_finding_without_mentions: give No Finding 1.0 to a report with no counted mention (the
        CheXpert labeler's behaviour); default False: such a report's row is all blank.
    lexicon_dir: a lexicon folder in the bundled format (None: the bundled lexicon).
    cache_size: distinct sentence texts memoised per process.
    batch_size: ``nlp.pipe`` batch size.
    """

    labeled_sections: tuple[str, ...] = ()
    excluded_sections: tuple[str, ...] = INDICATION_SECTIONS
    no_finding_without_mentions: bool = False
    lexicon_dir: str | None = field(default=None, metadata={CONTENT: True})
    cache_size: int = 100_000
    batch_size: int = 256


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


def _labeled_flags(sentences: pa.Table, sections: pa.Table | None, config: ExtractConfig) -> list[bool]:
    """Whether each sentence's section counts toward labels.

    The sentence's own section is found by ``section_idx`` (sentences v2), else by its offset.
    """
    excluded = set(config.excluded_sections)
    names = sentences.column("section").to_pylist()
    if config.labeled_sections or sections is None:
        wanted = set(config.labeled_sections)
        return [n in wanted and n not in excluded for n in names]
    cols = [
        sections.column(c).to_pylist()
        for c in ("report_id", "section_idx", "start", "end", "section", "is_labeled")
    ]
    rids = sentences.column("report_id").to_pylist()
    if "section_idx" in sentences.column_names and "section_idx" in sections.column_names:
        labeled_by_idx = {(rid, idx): bool(lab) for rid, idx, _, _, _, lab in zip(*cols, strict=True)}
        idxs = sentences.column("section_idx").to_pylist()
        return [
            labeled_by_idx.get((rid, idx), False) and name not in excluded
            for rid, idx, name in zip(rids, idxs, names, strict=True)
        ]
    spans: dict[str, list[tuple[int, int, str, bool]]] = {}
    for rid, _, start, end, name, labeled in zip(*cols, strict=True):
        spans.setdefault(rid, []).append((start, end, name, bool(labeled)))
    for v in spans.values():
        v.sort()
    flags = []
    for rid, start, name in zip(rids, sentences.column("start").to_pylist(), names, strict=True):
        secs = spans.get(rid, [])
        # the section instance holding the sentence (a report may have two "impression" sections)
        k = bisect.bisect_right(secs, (start, float("inf"))) - 1
        if k >= 0 and secs[k][0] <= start < max(secs[k][1], secs[k][0] + 1) and secs[k][2] == name:
            labeled = secs[k][3]
        else:
            labeled = any(s[3] for s in secs if s[2] == name)
        flags.append(labeled and name not in excluded)
    return flags


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
    """
    _check_inputs(tables, config)
    lexicon = load_lexicon(config.lexicon_dir)
    engine = load_engine(lexicon.source, config.cache_size)
    report_ids = tables["reports"].column("report_id").to_pylist()
    sent = {c: tables["sentences"].column(c).to_pylist() for c in _REQUIRED["sentences"]}
    labeled = _labeled_flags(tables["sentences"], tables.get("sections"), config)

    known = set(report_ids)
    order = {rid: i for i, rid in enumerate(report_ids)}
    rows = [i for i, rid in enumerate(sent["report_id"]) if rid in known]
    if len(rows) != len(sent["report_id"]):
        log.warning(
            "extract: %d sentences belong to no report of this partition; ignored",
            len(sent["report_id"]) - len(rows),
        )
    rows.sort(key=lambda i: (order[sent["report_id"][i]], sent["sentence_idx"][i]))
    hits = engine.analyse([sent["text"][i] for i in rows], batch_size=config.batch_size)

    cols: dict[str, list] = {
        name: []
        for name in (
            "report_id",
            "section",
            "sentence_idx",
            "start",
            "end",
            *_HIT_FIELDS,
            "cue_start",
            "cue_end",
            "modifiers",
            "in_labeled_section",
        )
    }
    for i, sentence_hits in zip(rows, hits, strict=True):
        base = sent["start"][i]
        for h in sentence_hits:
            cols["report_id"].append(sent["report_id"][i])
            cols["section"].append(sent["section"][i])
            cols["sentence_idx"].append(sent["sentence_idx"][i])
            cols["start"].append(base + h.start)
            cols["end"].append(base + h.end)
            for name in _HIT_FIELDS:
                cols[name].append(getattr(h, name))
            cols["cue_start"].append(None if h.cue_start is None else base + h.cue_start)
            cols["cue_end"].append(None if h.cue_end is None else base + h.cue_end)
            cols["modifiers"].append(
                [{"kind": k, "value": v, "start": base + a, "end": base + b} for k, v, a, b in h.modifiers]
            )
            cols["in_labeled_section"].append(labeled[i])
    mentions = typed_table(cols, "mentions")

    with_sentences = {sent["report_id"][i] for i in rows}
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
