"""Per-report RadGraph-style entities and relations from mentions (pure, no I/O).

For each counted mention (``in_labeled_section``, unless configured otherwise):

* an observation entity on the mention's span, labelled by status (present OBS-DP, uncertain
  OBS-U, absent OBS-DA), concept = mentions.finding;
* an anatomy entity (ANAT-DP) on the nearest written surface term of mentions.anatomy in the same
  sentence (vocabulary.yaml ``anatomy``), within ``window`` characters, and ``located_at`` from the
  observation to it. The text engine records only the anatomy id, so its span is found again here;
  an anatomy that is only the finding's default (nothing written) gets no entity;
* a modifier entity per laterality / size / severity / temporal value on the mention, on the
  nearest surface word of that value, with ``modify`` to the anatomy (laterality, when the anatomy
  has an entity) or to the observation. RadGraph labels laterality ANAT-DP, the others OBS-DP;
* ``suggestive_of`` from an observation to the next observation of the same sentence when that one
  is uncertain and a suggestive cue ("may represent", "concerning for") lies between them.

Anatomy and modifier entities are shared (one per span and label). Entity ids are ``e0, e1, ...``
in (start, end, label, concept) order, so the output is deterministic.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipeline.core.schemas import conform, load_schema
from pipeline.graph.vocabulary import Vocabulary, load_vocabulary, term_pattern

LABELS: tuple[str, ...] = ("ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA")
LABEL_ID: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
RELATIONS: tuple[str, ...] = ("located_at", "modify", "suggestive_of")
RELATION_ID: dict[str, int] = {r: i for i, r in enumerate(RELATIONS)}
STATUS_LABEL: dict[str, str] = {"present": "OBS-DP", "uncertain": "OBS-U", "absent": "OBS-DA"}
LABEL_STATUS: dict[str, str] = {v: k for k, v in STATUS_LABEL.items()}
MODIFIER_KINDS: tuple[str, ...] = ("laterality", "size", "severity", "temporal")
SUGGESTIVE = re.compile(
    r"\b(?:may|might|could|can)\s+(?:represent|reflect|be|indicate)\b|\bsuggestive\s+of\b|\bsuggest(?:s|ing)?\b"
    r"|\bconcerning\s+for\b|\bworrisome\s+for\b|\bcompatible\s+with\b|\bconcern\s+for\b|\bpossibly\b"
    r"|\bquestionable\b|\blikely\b|\bprobably\b|\brepresent(?:s|ing)?\b|\bversus\b|\bvs\.?",
    re.IGNORECASE,
)
ENTITY_COLUMNS: tuple[str, ...] = tuple(load_schema("kg_entities").names)
RELATION_COLUMNS: tuple[str, ...] = tuple(load_schema("kg_relations").names)

Row = dict[str, Any]


@functools.cache
def _patterns(
    vocab_version: int,
) -> tuple[dict[str, re.Pattern[str]], dict[tuple[str, str], re.Pattern[str]]]:
    vocab = load_vocabulary()
    anatomy = {a: term_pattern(terms) for a, terms in vocab.anatomy_terms.items()}
    modifiers = {
        (kind, value): term_pattern(terms)
        for kind, values in vocab.modifier_terms.items()
        for value, terms in values.items()
    }
    return anatomy, modifiers


def concept_id(vocab: Vocabulary, kind: str, concept: str) -> int:
    """The GCN node feature of a concept: its vocabulary slot, the anatomy index, or -1."""
    if kind == "observation":
        return vocab.slot.get(concept, -1)
    if kind == "anatomy":
        names = list(vocab.anatomy_terms)
        return names.index(concept) if concept in vocab.anatomy_terms else -1
    return -1


def _nearest(
    pattern: re.Pattern[str], text: str, base: int, start: int, end: int, window: int
) -> tuple[int, int] | None:
    """The match of ``pattern`` in ``text`` (at report offset ``base``) nearest to [start, end)."""
    best, best_key = None, None
    for m in pattern.finditer(text):
        s, e = base + m.start(), base + m.end()
        d = 0 if s < end and e > start else (start - e if e <= start else s - end)
        if d > window:
            continue
        key = (d, 0 if e <= start else 1, s)  # on a tie the word before the mention wins
        if best_key is None or key < best_key:
            best, best_key = (s, e), key
    return best


def report_graph(
    report_id: str,
    mentions: Sequence[Mapping[str, Any]],
    sentences: Mapping[int, tuple[int, str]],
    *,
    window: int = 40,
) -> tuple[list[Row], list[Row]]:
    """Entities and relations of one report.

    ``mentions``: rows of schemas/mentions.yaml (offsets into reports.text); ``sentences``:
    sentence_idx -> (start, text). Returns (entity rows, relation rows) in kg_* column order.
    A mention whose sentence is missing still gets its observation entity (no anatomy/modifiers).
    """
    vocab = load_vocabulary()
    anat_pat, mod_pat = _patterns(vocab.version)
    nodes: dict[tuple[int, int, str, str], Row] = {}
    edges: dict[tuple[tuple, tuple], str] = {}

    def node(start: int, end: int, label: str, kind: str, concept: str, text: str, sidx: int | None) -> tuple:
        key = (start, end, label, concept)
        if key not in nodes:
            nodes[key] = {
                "report_id": report_id,
                "label": label,
                "label_id": LABEL_ID[label],
                "kind": kind,
                "text": text,
                "start": start,
                "end": end,
                "concept": concept,
                "concept_id": concept_id(vocab, kind, concept),
                "sentence_idx": sidx,
                "source": "mentions",
            }
        return key

    by_sentence: dict[int, list[tuple[tuple, Mapping[str, Any]]]] = {}
    for m in sorted(mentions, key=lambda m: (m["start"], m["end"], m["finding"])):
        sidx = m["sentence_idx"]
        obs = node(
            m["start"], m["end"], STATUS_LABEL[m["status"]], "observation", m["finding"], m["text"], sidx
        )
        by_sentence.setdefault(sidx, []).append((obs, m))
        sentence = sentences.get(sidx)
        if sentence is None:
            continue
        base, text = sentence
        anat = None
        if m.get("anatomy") in anat_pat:
            span = _nearest(anat_pat[m["anatomy"]], text, base, m["start"], m["end"], window)
            if span is not None and span != (m["start"], m["end"]):  # "heart size": one entity, not two
                s, e = span
                anat = node(s, e, "ANAT-DP", "anatomy", m["anatomy"], text[s - base : e - base], sidx)
                edges.setdefault((obs, anat), "located_at")
        for kind in MODIFIER_KINDS:
            value = m.get(kind)
            if not value or (kind, value) not in mod_pat:
                continue
            span = _nearest(mod_pat[(kind, value)], text, base, m["start"], m["end"], window)
            if span is None:
                continue
            s, e = span
            if anat is not None and (s, e) == anat[:2]:
                continue  # laterality implied by the anatomy word itself ("bibasilar")
            if s >= m["start"] and e <= m["end"]:
                continue  # part of the mention's own words ("acute" in "acute cardiopulmonary process")
            label = "ANAT-DP" if kind == "laterality" else "OBS-DP"
            mod = node(s, e, label, "modifier", f"{kind}:{value}", text[s - base : e - base], sidx)
            target = anat if kind == "laterality" and anat is not None else obs
            edges.setdefault((mod, target), "modify")
    for sidx, items in by_sentence.items():
        sentence = sentences.get(sidx)
        if sentence is None:
            continue
        base, text = sentence
        items = sorted({k: m for k, m in items}.items(), key=lambda kv: kv[0][:2])
        for (a, ma), (b, mb) in zip(items, items[1:], strict=False):
            if mb["status"] != "uncertain" or ma["status"] == "absent" or b[0] < a[1] or a == b:
                continue
            gap = text[a[1] - base : b[0] - base]
            if len(gap) <= 60 and SUGGESTIVE.search(gap):
                edges.setdefault((a, b), "suggestive_of")
    order = sorted(nodes, key=lambda k: (k[0], k[1], LABEL_ID[k[2]], k[3]))
    ids = {key: f"e{i}" for i, key in enumerate(order)}
    entities = [{"entity_id": ids[k], **nodes[k]} for k in order]
    relations = [
        {
            "report_id": report_id,
            "source_id": ids[s],
            "target_id": ids[t],
            "relation": rel,
            "relation_id": RELATION_ID[rel],
        }
        for (s, t), rel in sorted(
            edges.items(), key=lambda kv: (entity_order(ids[kv[0][0]]), entity_order(ids[kv[0][1]]))
        )
    ]
    return [{c: e[c] for c in ENTITY_COLUMNS} for e in entities], relations


def entity_order(entity_id: str) -> tuple:
    """Sort key of entity ids: 'e2' before 'e10'; other ids by text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", entity_id) if p)


def rows_table(rows: Iterable[Mapping[str, Any]], dataset: str) -> pa.Table:
    """Rows (dicts) to a table conformed to ``dataset`` (kg_entities or kg_relations)."""
    target = load_schema(dataset).arrow()
    rows = list(rows)
    arrays = [pa.array([r[f.name] for r in rows], type=f.type) for f in target]
    return conform(pa.Table.from_arrays(arrays, schema=target), dataset)


def graphs_from_mentions(
    mentions: pa.Table,
    sentences: pa.Table,
    *,
    labeled_only: bool = True,
    window: int = 40,
) -> dict[str, tuple[list[Row], list[Row]]]:
    """Entities and relations of every report with at least one usable mention, by report_id."""
    if labeled_only and mentions.num_rows:
        mentions = mentions.filter(mentions.column("in_labeled_section"))
    per_report: dict[str, list[dict[str, Any]]] = {}
    for m in mentions.to_pylist():
        per_report.setdefault(m["report_id"], []).append(m)
    sents: dict[str, dict[int, tuple[int, str]]] = {}
    cols = sentences.select(["report_id", "sentence_idx", "start", "text"]).to_pydict()
    for rid, idx, start, text in zip(
        cols["report_id"], cols["sentence_idx"], cols["start"], cols["text"], strict=True
    ):
        if rid in per_report:
            sents.setdefault(rid, {})[idx] = (start, text)
    return {
        rid: report_graph(rid, rows, sents.get(rid, {}), window=window)
        for rid, rows in sorted(per_report.items())
    }


def sentence_of(starts: Sequence[int], ends: Sequence[int], idxs: Sequence[int], pos: int) -> int | None:
    """The sentence_idx whose [start, end) holds offset ``pos`` (``starts`` sorted), else None."""
    i = bisect.bisect_right(starts, pos) - 1
    return idxs[i] if i >= 0 and pos < ends[i] else None
