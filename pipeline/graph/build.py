"""Per-report RadGraph-style entities and relations from mentions (pure, no I/O).

For each counted mention (``in_labeled_section``, unless configured otherwise):

* an observation entity on the mention's span, labelled by status (present OBS-DP, uncertain
  OBS-U, absent OBS-DA), concept = mentions.finding;
* an anatomy entity (ANAT-DP) on the anatomy word the text engine gave the mention
  (mentions.modifiers, kind ``anatomy``), and ``located_at`` from the observation to it; an
  anatomy that is only the finding's default (nothing written) gets no entity;
* a modifier entity per laterality / size / severity / temporal word given to the mention, with
  ``modify`` to the anatomy (laterality, when the anatomy has an entity) or to the observation.
  RadGraph labels laterality ANAT-DP, the others OBS-DP;
* ``suggestive_of`` from an observation to the next observation of the same sentence when that one
  is uncertain and a suggestive cue ("may represent", "concerning for") lies between them.

Anatomy and modifier entities are shared (one per span and label). Entity ids are ``e0, e1, ...``
in (start, end, label, concept) order, so the output is deterministic.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipeline.core.schemas import conform, load_schema
from pipeline.graph.vocabulary import Vocabulary, load_vocabulary

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


def concept_id(vocab: Vocabulary, kind: str, concept: str) -> int:
    """The GCN node feature of a concept: its vocabulary slot, the anatomy index, or -1."""
    if kind == "observation":
        return vocab.slot.get(concept, -1)
    if kind == "anatomy":
        return vocab.anatomy_index.get(concept, -1)
    return -1


def report_graph(
    report_id: str,
    mentions: Sequence[Mapping[str, Any]],
    sentences: Mapping[int, tuple[int, str]],
) -> tuple[list[Row], list[Row]]:
    """Entities and relations of one report.

    ``mentions``: rows of schemas/mentions.yaml (offsets into reports.text); ``sentences``:
    sentence_idx -> (start, text). Returns (entity rows, relation rows) in kg_* column order.
    A mention whose sentence is missing still gets its observation entity (no anatomy/modifiers).
    """
    vocab = load_vocabulary()
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
        words = m.get("modifiers") or ()
        for w in words:
            # "heart size" is the anchor and its anatomy at once: one entity, not two
            if w["kind"] == "anatomy" and (w["start"], w["end"]) != (m["start"], m["end"]):
                s, e = w["start"], w["end"]
                anat = node(s, e, "ANAT-DP", "anatomy", w["value"], text[s - base : e - base], sidx)
                edges.setdefault((obs, anat), "located_at")
        for w in words:
            kind, s, e = w["kind"], w["start"], w["end"]
            if kind not in MODIFIER_KINDS:
                continue
            if anat is not None and (s, e) == anat[:2]:
                continue  # laterality implied by the anatomy word itself ("bibasilar")
            if s >= m["start"] and e <= m["end"]:
                continue  # part of the mention's own words ("acute" in "acute cardiopulmonary process")
            label = "ANAT-DP" if kind == "laterality" else "OBS-DP"
            mod = node(s, e, label, "modifier", f"{kind}:{w['value']}", text[s - base : e - base], sidx)
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
    position = {key: i for i, key in enumerate(order)}
    entities = [{"entity_id": f"e{position[k]}", **nodes[k]} for k in order]
    # entity "e<i>" sorts by i (entity_order), so the relations sort by position
    relations = [
        {
            "report_id": report_id,
            "source_id": f"e{position[s]}",
            "target_id": f"e{position[t]}",
            "relation": rel,
            "relation_id": RELATION_ID[rel],
        }
        for (s, t), rel in sorted(edges.items(), key=lambda kv: (position[kv[0][0]], position[kv[0][1]]))
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
) -> dict[str, tuple[list[Row], list[Row]]]:
    """Entities and relations of every report with at least one usable mention, by report_id."""
    if labeled_only and mentions.num_rows:
        mentions = mentions.filter(mentions.column("in_labeled_section"))
    per_report: dict[str, list[dict[str, Any]]] = {}
    used = ["report_id", "sentence_idx", "start", "end", "text", "finding", "status", "modifiers"]
    for m in mentions.select(used).to_pylist():
        per_report.setdefault(m["report_id"], []).append(m)
    sents: dict[str, dict[int, tuple[int, str]]] = {}
    cols = sentences.select(["report_id", "sentence_idx", "start", "text"]).to_pydict()
    for rid, idx, start, text in zip(
        cols["report_id"], cols["sentence_idx"], cols["start"], cols["text"], strict=True
    ):
        if rid in per_report:
            sents.setdefault(rid, {})[idx] = (start, text)
    return {rid: report_graph(rid, rows, sents.get(rid, {})) for rid, rows in sorted(per_report.items())}


def sentence_of(starts: Sequence[int], ends: Sequence[int], idxs: Sequence[int], pos: int) -> int | None:
    """The sentence_idx whose [start, end) holds offset ``pos`` (``starts`` sorted), else None."""
    i = bisect.bisect_right(starts, pos) - 1
    return idxs[i] if i >= 0 and pos < ends[i] else None
