"""The ``parse`` stage function: reports to sections and sentences, with offsets into the text.

Pure over one partition: ``parse({"reports": table}, config=...)`` returns ``{"sections",
"sentences", "rejects"}`` conformed to schemas/. Never mutates its input, never opens a file (the
bundled header rules are read once per process when this module is imported).

Accounting: every report either has at least one ``sections`` row (and at least one sentence) or
one ``rejects`` row (``empty_text``: empty or whitespace only; ``no_sentences``: no sentence with
a letter or a digit), never both.

Offsets are Python string indices (code points) into ``reports.text``; for every row
``text == report[start:end]``, with surrounding whitespace left out by moving offsets.

Memory: a report longer than :data:`pipeline.text.windows.WINDOW_CHARS` (no real one is) has its
sentences found as they are written and its rows turned into Arrow a window at a time, so the
Python rows held never exceed a window; the outputs then have one chunk per window, same rows.

Which sections are ``is_labeled`` (the section a CheXpert-style labeler reads), by default
MIT-LCP's choice for the official MIMIC-CXR labels: the last impression; else the last findings;
else the last paragraph; else the last comparison. A report with findings *and* impression has
only its impression marked; ``labeled="findings_and_impression"`` marks both (the last of each).
See :func:`pipeline.text.sections.mark_labeled` for the last-paragraph rule, which applies to MIMIC-CXR
reports only by default (``headerless``): a free-text cell of a table is labelled whole.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from pipeline.core.errors import PipelineError, did_you_mean, reject_table
from pipeline.core.schemas import conform
from pipeline.text import windows
from pipeline.text.sections import (
    HeaderRules,
    load_headers,
    mark_labeled,
    split_sections,
    valid_known,
)
from pipeline.text.sentences import (
    ABBREVIATIONS,
    AMBIGUOUS_ABBREVIATIONS,
    SentenceRules,
    iter_sentences,
    split_sentences,
)

log = logging.getLogger(__name__)

STAGE = "parse"
UNKNOWN_HEADER_POLICIES = ("mit_lcp", "ignore")
LABELED_POLICIES = ("mit_lcp", "findings_and_impression")
HEADERLESS_POLICIES = ("auto", "last_paragraph", "whole")
# adapters whose official labels read only a headerless report's last paragraph (MIT-LCP)
LAST_PARAGRAPH_SOURCES = frozenset({"mimic_cxr"})
_CANONICAL = re.compile(r"[a-z][a-z0-9_]*")

load_headers()  # read and check the bundled rules at import, not inside the stage


@dataclass(frozen=True)
class ParseConfig:
    """Config of the parse stage.

    unknown_headers: what an upper-case line header listed nowhere in section_headers.yaml does:
        ``"mit_lcp"`` opens a section named by MIT-LCP's fallbacks (a main section word in it,
        a views description as findings, else the header itself in snake_case); ``"ignore"``
        keeps it as body text. Listed spellings always count.
    inline_headers: also find the ``inline`` headers of section_headers.yaml mid-line
        (NIH-style ``... stable. impression: no change``).
    extra_headers: more header spellings as ``"spelling=canonical"`` (``"opinion finale=impression"``);
        they win over the bundled list.
    labeled: ``"mit_lcp"`` (only the last impression when there is one) or
        ``"findings_and_impression"`` (the last impression and the last findings).
    headerless: what a report with neither findings nor impression labels (see
        :func:`pipeline.text.sections.mark_labeled`). ``"last_paragraph"``: the text after the
        first blank line of its last section, split off as a ``last_paragraph`` section (MIT-LCP's
        rule, which the official MIMIC-CXR labels follow); ``"whole"``: the whole last section (a
        free-text cell is labelled whole, as the CheXpert labeler and CheXbert do); ``"auto"``:
        ``last_paragraph`` for reports whose ``source`` is ``mimic_cxr`` (the demo dump too),
        ``whole`` for every other adapter (tables, CheXpert Plus) and when there is no source.
    short_line: a line shorter than this (characters, indentation included) followed by a line
        starting with a capital ends its sentence (unpunctuated lists); 0 turns this off. Lines
        wrapped near column 79 are far longer.
    max_sentence_chars: a longer sentence is cut at a space (0: never); protects the NLP from
        megabyte "sentences" in unpunctuated text.
    abbreviations: words (lower case, final period left out) whose period never ends a sentence.
    ambiguous_abbreviations: words whose period ends a sentence only before a capitalised word.
    """

    unknown_headers: str = "mit_lcp"
    inline_headers: bool = True
    extra_headers: tuple[str, ...] = ()
    labeled: str = "mit_lcp"
    headerless: str = "auto"
    short_line: int = 40
    max_sentence_chars: int = 1000
    abbreviations: tuple[str, ...] = ABBREVIATIONS
    ambiguous_abbreviations: tuple[str, ...] = AMBIGUOUS_ABBREVIATIONS

    def __post_init__(self) -> None:
        if self.unknown_headers not in UNKNOWN_HEADER_POLICIES:
            raise _bad("unknown_headers", self.unknown_headers, UNKNOWN_HEADER_POLICIES)
        if self.labeled not in LABELED_POLICIES:
            raise _bad("labeled", self.labeled, LABELED_POLICIES)
        if self.headerless not in HEADERLESS_POLICIES:
            raise _bad("headerless", self.headerless, HEADERLESS_POLICIES)
        for entry in self.extra_headers:
            spelling, sep, name = entry.partition("=")
            if not sep or not spelling.strip() or not _CANONICAL.fullmatch(name.strip()):
                raise PipelineError(
                    "E_CONFIG_VALUE",
                    f"stages.parse.extra_headers: {entry!r} is not 'spelling=canonical_name' "
                    "(canonical names are snake_case, e.g. 'opinion finale=impression').",
                )
        if self.short_line < 0 or self.max_sentence_chars < 0:
            raise PipelineError(
                "E_CONFIG_VALUE",
                "stages.parse.short_line and max_sentence_chars must be >= 0 (0 turns them off).",
            )


def _bad(key: str, value: str, choices: tuple[str, ...]) -> PipelineError:
    return PipelineError("E_CONFIG_VALUE", f"stages.parse.{key}={value!r}." + did_you_mean(value, choices))


@functools.lru_cache(maxsize=16)
def _header_rules(extra: tuple[str, ...]) -> HeaderRules:
    rules = load_headers()
    if not extra:
        return rules
    pairs = [(s.strip(), n.strip()) for s, _, n in (e.partition("=") for e in extra)]
    return rules.with_extra(pairs)


@functools.lru_cache(maxsize=16)
def _sentence_rules(
    abbreviations: tuple[str, ...], ambiguous: tuple[str, ...], short_line: int, max_chars: int
) -> SentenceRules:
    def norm(words: tuple[str, ...]) -> frozenset[str]:
        return frozenset(w.strip().lower().rstrip(".") for w in words if w.strip())

    return SentenceRules(norm(abbreviations), norm(ambiguous), short_line, max_chars)


def parse(tables: Mapping[str, pa.Table], *, config: ParseConfig) -> dict[str, pa.Table]:
    """Split each report of ``tables["reports"]`` into sections and sentences.

    ``reports`` needs ``report_id`` and ``text``; ``sections`` (known spans, schemas/reports.yaml)
    is used when present: spans outside the text or overlapping an earlier one are ignored.
    Returns ``sections``, ``sentences`` and ``rejects`` conformed to their schemas.
    Raises PipelineError(E_PARSE_INPUT) when ``reports`` or one of its needed columns is missing.
    """
    reports = tables.get("reports")
    if reports is None:
        raise PipelineError("E_PARSE_INPUT", f"parse needs a 'reports' table; got {sorted(tables)}.")
    missing = [c for c in ("report_id", "text") if c not in reports.column_names]
    if missing:
        raise PipelineError(
            "E_PARSE_INPUT", f"reports lacks columns {missing} (see schemas/reports.yaml); rerun ingest."
        )
    ids = reports.column("report_id").to_pylist()
    texts = reports.column("text").to_pylist()
    spans = reports.column("sections").to_pylist() if "sections" in reports.column_names else None
    if config.headerless == "auto":
        sources = reports.column("source").to_pylist() if "source" in reports.column_names else None
        last_paragraph = [s in LAST_PARAGRAPH_SOURCES for s in sources] if sources else [False] * len(ids)
    else:
        last_paragraph = [config.headerless == "last_paragraph"] * len(ids)

    rules = _header_rules(config.extra_headers)
    srules = _sentence_rules(
        config.abbreviations, config.ambiguous_abbreviations, config.short_line, config.max_sentence_chars
    )
    sec = _Rows(
        "sections", ("report_id", "section_idx", "section", "header", "text", "start", "end", "is_labeled")
    )
    sen = _Rows("sentences", ("report_id", "section", "section_idx", "sentence_idx", "text", "start", "end"))
    rejected: list[tuple[str, str, str | None]] = []
    dropped_spans = 0
    limit = windows.WINDOW_CHARS

    for i, (rid, text) in enumerate(zip(ids, texts, strict=True)):
        if not text or text.isspace():
            rejected.append((rid, "empty_text", "empty" if not text else "whitespace only"))
            continue
        raw_spans = spans[i] if spans is not None else None
        known = valid_known(raw_spans, len(text))
        if raw_spans and len(known) != len(raw_spans):
            dropped_spans += len(raw_spans) - len(known)
        sections = split_sections(
            text, known, rules, unknown=config.unknown_headers, inline=config.inline_headers
        )
        sections, flags = mark_labeled(
            text, sections, policy=config.labeled, last_paragraph=last_paragraph[i]
        )
        windowed = 0 < limit < len(text)
        if windowed:
            # sentences are found again as they are written, never held for the whole report
            found = any(next(iter_sentences(text, s.start, s.end, srules), None) for s in sections)
            per_section: Iterable[Iterable[tuple[int, int]]] = (
                iter_sentences(text, s.start, s.end, srules) for s in sections
            )
        else:
            per_section = [split_sentences(text, s.start, s.end, srules) for s in sections]
            found = any(per_section)
        if not found:
            rejected.append(
                (rid, "no_sentences", f"{len(sections)} sections, no sentence with a letter or digit")
            )
            continue
        sentence_idx = 0
        for k, (s, flag, sents) in enumerate(zip(sections, flags, per_section, strict=True)):
            sec.add((rid, k, s.name, s.header, text[s.start : s.end], s.start, s.end, flag), s.end - s.start)
            for a, b in sents:
                sen.add((rid, s.name, k, sentence_idx, text[a:b], a, b), b - a)
                sentence_idx += 1
                if windowed and sen.chars + sec.chars >= limit:
                    sec.flush()
                    sen.flush()
            if windowed and sec.chars >= limit:
                sec.flush()

    if dropped_spans:
        log.warning(
            "parse: ignored %d known section spans outside their text or overlapping another", dropped_spans
        )
    return {
        "sections": sec.table(),
        "sentences": sen.table(),
        "rejects": reject_table(STAGE, "sections", rejected),
    }


class _Rows:
    """The rows of one output, turned into conformed Arrow chunks by :meth:`flush` (once per
    window on a long report, see :mod:`pipeline.text.windows`; else once, at the end)."""

    def __init__(self, dataset: str, columns: tuple[str, ...]) -> None:
        self.dataset = dataset
        self.names = columns
        self.rows: list[tuple] = []
        self.chunks: list[pa.Table] = []
        self.chars = 0  # characters of text held in the rows

    def add(self, row: tuple, chars: int) -> None:
        self.rows.append(row)
        self.chars += chars

    def flush(self) -> None:
        if self.rows:
            self.chunks.append(self._conformed())

    def table(self) -> pa.Table:
        """Every row added, in order: one chunk per flush (an unwindowed partition has one)."""
        if not self.chunks or self.rows:
            self.chunks.append(self._conformed())
        return self.chunks[0] if len(self.chunks) == 1 else pa.concat_tables(self.chunks)

    def _conformed(self) -> pa.Table:
        columns = zip(*self.rows, strict=True) if self.rows else ([] for _ in self.names)
        table = conform(_table(dict(zip(self.names, map(list, columns), strict=True))), self.dataset)
        self.rows = []
        self.chars = 0
        return table


_TYPES = {
    "section_idx": pa.int32(),
    "sentence_idx": pa.int32(),
    "start": pa.int32(),
    "end": pa.int32(),
    "is_labeled": pa.bool_(),
}


def _table(columns: dict[str, list]) -> pa.Table:
    return pa.table({k: pa.array(v, _TYPES.get(k, pa.string())) for k, v in columns.items()})
