"""The hardneg stages: ``hardneg_rewrite`` proposes, the text package's ``reread`` reads back,
``hardneg`` keeps what reads back as intended.

The self-consistency gate needs the text engine, and stage packages meet only through datasets,
so the gate is a dataset round trip: ``hardneg_candidates`` (every proposed text with the
statuses it must read as) -> ``reread`` (text engine) -> ``hardneg_readings`` -> ``hardneg``.
A candidate whose reading differs goes to ``rejects`` (``flip_failed``, the first difference in
``detail``); nothing unchecked ships.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import reject_table
from pipeline.core.registry import map_stage
from pipeline.core.schemas import chexpert_observations, conform, load_schema
from pipeline.hardneg.rewrite import Flip, FlipKey, MentionRow, flip_key, flips_of_key, load_rules
from pipeline.hardneg.variants import clean, denial, draw, locations, place, site_phrase


@dataclass(frozen=True)
class HardnegConfig:
    """Hard negatives and report variants (shared by hardneg_rewrite and hardneg).

    seed: draws the denial template and its place per report and finding.
    labeled_only: work on the sentences of the labeled sections (findings, impression), not
        indication or history.
    benchmark_splits: reports of these splits get the benchmark templates and go to cxr_align;
        the others get the train templates.
    flips / variants: switch the sentence flips or the report variants off.
    """

    seed: int = 0
    labeled_only: bool = True
    benchmark_splits: tuple[str, ...] = ("test",)
    flips: bool = True
    variants: bool = True


@dataclass(frozen=True)
class GateConfig:
    """The gate has no knobs: a candidate ships only when every text reads exactly as expected."""


def reading(findings: Any) -> str:
    """The canonical reading of one text: sorted "finding=status" items joined by ";"."""
    return ";".join(sorted({f"{f}={s}" for f, s in findings}))


# A candidate row is a tuple in this order (cheaper than a dict per row; columns by name below).
_CANDIDATE = (
    "candidate_id", "report_id", "kind", "finding", "method", "sentence_idx", "original", "flipped",
    "original_status", "flipped_status", "texts", "expected", "chosen", "report", "omitted",
    "negation", "location", "template_set", "subject_id", "study_id", "split",
)  # fmt: skip


def _candidates(rows: list[tuple[Any, ...]]) -> pa.Table:
    """``hardneg_candidates`` from ``_CANDIDATE`` tuples; a schema column not among them fails."""
    schema = load_schema("hardneg_candidates").arrow()
    columns = zip(*rows, strict=True) if rows else [()] * len(_CANDIDATE)
    arrays = {
        name: pa.array(list(col), type=schema.field(name).type)
        for name, col in zip(_CANDIDATE, columns, strict=True)
    }
    return _select(pa.table(arrays), "hardneg_candidates")


def _select(table: pa.Table, dataset: str) -> pa.Table:
    """``table``'s columns of ``dataset``, conformed (the others dropped)."""
    return conform(table.select(load_schema(dataset).names), dataset)


def _labeled(tables: Mapping[str, pa.Table], config: HardnegConfig) -> set[tuple[str, int]] | None:
    if not config.labeled_only:
        return None
    s = tables["sections"].select(["report_id", "section_idx", "is_labeled"]).to_pydict()
    return {
        (rid, idx)
        for rid, idx, lab in zip(s["report_id"], s["section_idx"], s["is_labeled"], strict=True)
        if lab
    }


def _sentences(
    tables: Mapping[str, pa.Table], config: HardnegConfig
) -> dict[str, list[tuple[int, int, str]]]:
    """(sentence_idx, start, text) of each report's sentences that a rewrite reads, in order."""
    labeled = _labeled(tables, config)
    s = tables["sentences"].select(["report_id", "sentence_idx", "section_idx", "start", "text"])
    out: dict[str, list[tuple[int, int, str]]] = {}
    for rid, idx, section, start, text in zip(*(c.to_pylist() for c in s.columns), strict=True):
        if labeled is None or (rid, section) in labeled:
            out.setdefault(rid, []).append((idx, start, text))
    for sents in out.values():
        sents.sort(key=lambda x: x[0])
    return out


def _mentions(mentions: pa.Table) -> dict[tuple[str, int], list[MentionRow]]:
    """Each sentence's mention rows, by (report_id, sentence_idx), column by column: only what a
    flip or a variant reads, and ``modifiers`` from its Arrow child arrays (rows of nested dicts
    cost more than the rewrites)."""
    keys = [mentions.column(c).to_pylist() for c in ("report_id", "sentence_idx")]
    columns = [mentions.column(c).to_pylist() for c in MentionRow._fields[:-1]]
    modifiers = mentions.column("modifiers").combine_chunks()
    lengths = pc.list_value_length(modifiers).to_pylist()
    flat = pc.list_flatten(modifiers)
    words = list(zip(*(flat.field(n).to_pylist() for n in ("kind", "value", "start", "end")), strict=True))
    per_row = []
    at = 0
    for n in lengths:
        per_row.append(tuple(words[at : at + n]))
        at += n
    out: dict[tuple[str, int], list[MentionRow]] = {}
    for rid, idx, row in zip(*keys, map(MentionRow, *columns, per_row), strict=True):
        out.setdefault((rid, idx), []).append(row)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _sentence_flips(key: FlipKey) -> tuple[tuple[Flip, str | None], ...]:
    """The flips of a sentence (a :func:`flip_key`), each with the reading it must give (None when
    no rewrite applies), remembered per key: flips depend on nothing else."""
    statuses = [(m[0], m[1]) for m in key[1]]
    out = []
    for f in flips_of_key(key):
        expected = [(g, st) for g, st in statuses if g != f.finding] + [(f.finding, f.flipped_status)]
        out.append((f, reading(expected) if f.text else None))
    return tuple(out)


@map_stage(
    "hardneg_rewrite",
    version=2,
    inputs=("reports", "sentences", "mentions", "sections"),
    outputs=("hardneg_candidates",),
    config=HardnegConfig,
)
def hardneg_rewrite(tables: Mapping[str, pa.Table], *, config: HardnegConfig) -> dict[str, pa.Table]:
    """Sentence flips and negated reports of one partition, each with the reading it must give."""
    rules = load_rules()
    reports = tables["reports"].select(["report_id", "subject_id", "study_id", "split"])
    sentences = _sentences(tables, config)
    mentions = _mentions(tables["mentions"])

    rows: list[tuple[Any, ...]] = []
    rejected = []
    for rid, *ids in zip(*(c.to_pylist() for c in reports.columns), strict=True):
        sents = sentences.get(rid, [])
        before = len(rows)
        if config.flips:
            # a sentence written twice in a report (findings and impression) gives its pairs once
            done: set[tuple[str, str, str]] = set()
            for idx, start, text in sents:
                ms = mentions.get((rid, idx))
                if not ms:
                    continue
                for f, expected in _sentence_flips(flip_key(text, ms, start)):
                    if (text, f.finding, f.flipped_status) in done:
                        continue
                    done.add((text, f.finding, f.flipped_status))
                    rows.append(
                        (
                            f"{rid}|s{idx}|{f.finding}|{f.flipped_status}|{f.method}",
                            rid,
                            "flip",
                            f.finding,
                            f.method,
                            idx,
                            text,
                            f.text or None,
                            f.original_status,
                            f.flipped_status,
                            [f.text] if f.text else [],
                            [expected] if f.text else [],
                            *(None,) * 6,  # chosen .. template_set: denials only
                            *ids,
                        )
                    )
        if config.variants:
            rows.extend(_variants(rid, tuple(ids), sents, mentions, rules.denials, config))
        if len(rows) == before:
            rejected.append((rid, "no_findings", "no sentence of the labeled sections mentions a finding"))
    return {
        "hardneg_candidates": _candidates(rows),
        "rejects": conform(reject_table("hardneg_rewrite", "hardneg_candidates", rejected), "rejects"),
    }


def _variants(
    rid: str,
    ids: tuple[Any, ...],
    sents: list[tuple[int, int, str]],
    mentions: Mapping[tuple[str, int], list[MentionRow]],
    denials: Mapping[str, tuple[str, ...]],
    config: HardnegConfig,
) -> list[tuple[Any, ...]]:
    """One denial candidate per finding present in the report (the omitted + negated report);
    ``sents``: the report's (sentence_idx, start, text); ``ids``: its subject, study and split."""
    kept: list[tuple[str, set[str], str]] = []  # (cleaned text, findings mentioned, expected reading)
    present: dict[str, str] = {}  # finding -> its phrase, first present mention
    for idx, _, sentence_text in sents:
        ms = mentions.get((rid, idx), [])
        for m in ms:
            # a statement ("normal chest radiograph") has no denial the engine reads
            if m.status == "present" and m.finding not in present and not m.rule.startswith("statement."):
                # "the heart is enlarged": the mention is the structure; deny the finding by name
                present[m.finding] = (
                    m.finding.replace("_", " ")
                    if m.rule.startswith("qual.")
                    else site_phrase(
                        m.finding, m.text, [{"kind": k, "value": v} for k, v, _, _ in m.modifiers]
                    )
                )
        text = clean(sentence_text, bool(ms))
        if text is not None:
            kept.append((text, {m.finding for m in ms}, reading((m.finding, m.status) for m in ms)))
    if not present:
        return []
    template_set = "benchmark" if ids[2] in config.benchmark_splits else "train"
    templates = denials[template_set]
    report = " ".join(t for t, _, _ in kept)
    out = []
    for finding, phrase in sorted(present.items()):
        rest = [(t, e) for t, found, e in kept if finding not in found]
        k = draw(config.seed, rid, finding, "template", n=len(templates))
        # nothing left once the finding is omitted: the denial alone ("add"); one sentence left:
        # first or last, since a middle there would be one of them
        places = locations(len(rest))
        location = places[draw(config.seed, rid, finding, "location", n=len(places))]
        sentence = denial(phrase, templates[k])
        texts = place([t for t, _ in rest], sentence, location)
        expected = place([e for _, e in rest], reading([(finding, "absent")]), location)
        out.append(
            (
                f"{rid}|denial|{finding}",
                rid,
                "denial",
                finding,
                f"{template_set}.{k}",
                None,  # sentence_idx, original: flips only
                None,
                sentence,
                "present",
                "absent",
                texts,
                expected,
                phrase,
                report,
                " ".join(t for t, _ in rest),
                " ".join(texts),
                location,
                template_set,
                *ids,
            )
        )
    return out


def _difference(expected: list[str], observed: list[str]) -> str | None:
    if len(expected) != len(observed):
        return f"{len(observed)} readings for {len(expected)} texts"
    for i, (e, o) in enumerate(zip(expected, observed, strict=True)):
        if e != o:
            return f"text {i}: read {o or '(nothing)'!r}, expected {e or '(nothing)'!r}"
    return None


# CXR-Align's `chosen`: one of the 13 CheXpert classes; No Finding is no finding to deny.
ALIGN_CLASSES = frozenset(chexpert_observations()) - {"No Finding"}


def chexpert_class_of(findings: pa.Table) -> dict[str, str]:
    """Fine finding -> its CheXpert class, from a ``findings`` table (whose ``observation`` is the
    lexicon's, one per finding); findings with none (null) or No Finding are absent."""
    f = findings.select(["finding", "observation"]).to_pydict()
    return {
        finding: obs
        for finding, obs in zip(f["finding"], f["observation"], strict=True)
        if obs in ALIGN_CLASSES
    }


@map_stage(
    "hardneg",
    version=2,
    inputs=("hardneg_candidates", "hardneg_readings", "findings"),
    outputs=("negation_pairs", "negated_reports", "cxr_align"),
    config=GateConfig,
    key="candidate_id",
    primary_output=("negation_pairs", "negated_reports"),
)
def hardneg(tables: Mapping[str, pa.Table], *, config: GateConfig) -> dict[str, pa.Table]:
    """The candidates that read back as intended: sentence pairs, negated reports, CXR-Align rows.

    A benchmark negated report is a CXR-Align row only when its finding has a CheXpert class
    (``findings.observation``, the lexicon's), which becomes ``chosen``; the others stay in
    ``negated_reports`` only (their count: its benchmark rows less cxr_align's).
    """
    readings = tables["hardneg_readings"]
    observed = dict(
        zip(
            readings.column("candidate_id").to_pylist(),
            readings.column("observed").to_pylist(),
            strict=True,
        )
    )
    classes = chexpert_class_of(tables["findings"])
    candidates = tables["hardneg_candidates"]
    # columnar: only what the gate reads goes to Python; the rows that ship are taken from the
    # candidates table as they are (their long texts never leave Arrow)
    c = candidates.select(
        ["candidate_id", "kind", "finding", "original_status", "texts", "expected", "template_set"]
    ).to_pydict()
    pairs, negated, align, rejected = [], [], [], []
    chosen = []
    for k, (cid, kind, finding, status, texts, expected, template_set) in enumerate(
        zip(*c.values(), strict=True)
    ):
        dataset = "negation_pairs" if kind == "flip" else "negated_reports"
        if not texts:
            why = f"no rewrite family applies to {finding} ({status})"
        elif cid not in observed:
            why = "no reading: rerun the reread stage"
        else:
            why = _difference(expected, observed[cid])
        if why is not None:
            rejected.append((cid, dataset, "flip_failed", why))
        elif kind == "flip":
            pairs.append(k)
        else:
            negated.append(k)
            if template_set == "benchmark" and finding in classes:
                align.append(k)
                chosen.append(classes[finding])
    rejects = pa.table(
        {
            "stage": ["hardneg"] * len(rejected),
            "dataset": [r[1] for r in rejected],
            "row_id": [r[0] for r in rejected],
            "reason_code": [r[2] for r in rejected],
            "detail": [r[3][:500] for r in rejected],
        }
    )
    negated_rows = candidates.take(pa.array(negated, pa.int64()))
    negated_rows = negated_rows.append_column("denial", negated_rows["flipped"]).append_column(
        "template", negated_rows["method"]
    )
    align_rows = candidates.take(pa.array(align, pa.int64())).drop_columns(["chosen"])
    return {
        "negation_pairs": _select(candidates.take(pa.array(pairs, pa.int64())), "negation_pairs"),
        "negated_reports": _select(negated_rows, "negated_reports"),
        "cxr_align": _select(align_rows.append_column("chosen", pa.array(chosen, pa.string())), "cxr_align"),
        "rejects": conform(rejects, "rejects"),
    }
