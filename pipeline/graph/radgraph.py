"""RadGraph JSON out and in.

RadGraph's format, per report: ``text`` (the report's tokens joined by single spaces) and
``entities``, a map from entity id to ``tokens``, ``label``, ``start_ix``, ``end_ix`` (token
indices, inclusive) and ``relations`` (``[[relation, target_id], ...]``, relation in located_at,
modify, suggestive_of). Our tokens are runs of letters, runs of digits, or single other non-space
characters of reports.text, fine enough that every entity span of ours starts and ends on a token
boundary.

Two label sets exist. RadGraph v1 (PhysioNet 1.0.0, the package's ``radgraph`` model): ANAT-DP,
OBS-DP, OBS-U, OBS-DA. RadGraph-XL (the package's default ``modern-radgraph-xl`` model, CheXpert
Plus' files): ``Observation::definitely present``, ``Observation::uncertain``,
``Observation::definitely absent``, ``Anatomy::definitely present``, and rarely
``Anatomy::uncertain``, ``Anatomy::definitely absent`` and the ``::measurement::`` variants of all
six (``Observation::measurement::definitely present``...). Import accepts both and normalises to
the v1 labels of kg_entities: an Observation keeps its status, every Anatomy becomes ANAT-DP (our
schema, like v1's, has no anatomy status) and the measurement qualifier is dropped. Export writes
v1 (default) or XL (``labels="xl"``; ``python -m pipeline.graph export OUT --labels xl``).

Import aligns the file's tokens to reports.text in order (so character offsets are recovered
exactly: RadGraph's own re-tokenisation, ``patient ' s`` and a separate ``.``, aligns too) and
names each entity's concept from its words through pipeline/graph/vocabulary.yaml.
Tables -> JSON -> tables keeps entity ids, labels, offsets, texts and relations exactly, in either
label set; concept, kind and sentence_idx are recomputed on import (the format does not carry them).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import fsspec

from pipeline.core.errors import PipelineError
from pipeline.graph.build import LABEL_ID, LABELS, RELATION_ID, Row, concept_id, entity_order, sentence_of
from pipeline.graph.vocabulary import load_vocabulary

TOKEN = re.compile(r"[^\W\d_]+|\d+|\S")

LABEL_SETS: tuple[str, ...] = ("v1", "xl")
XL_STATUSES: tuple[str, ...] = ("definitely present", "definitely absent", "uncertain")
# kg_entities label -> RadGraph-XL label (what an XL export writes)
XL_LABEL: dict[str, str] = {
    "ANAT-DP": "Anatomy::definitely present",
    "OBS-DP": "Observation::definitely present",
    "OBS-U": "Observation::uncertain",
    "OBS-DA": "Observation::definitely absent",
}
_XL = re.compile(r"(Anatomy|Observation)(?:::measurement)?::(definitely present|definitely absent|uncertain)")
_XL_OBSERVATION = {"definitely present": "OBS-DP", "uncertain": "OBS-U", "definitely absent": "OBS-DA"}
ACCEPTED_LABELS = (
    f"v1 {', '.join(LABELS)}; RadGraph-XL Anatomy::<status> or Observation::<status>, optionally "
    f"with ::measurement:: before the status, status one of {', '.join(XL_STATUSES)}"
)


def check_label_set(labels: str) -> str:
    """``labels`` when it names a label set (v1, xl); raises PipelineError(E_CONFIG_VALUE) otherwise."""
    if labels not in LABEL_SETS:
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"labels={labels!r} is not a RadGraph label set; choose from: "
            f"{', '.join(LABEL_SETS)} (v1: ANAT-DP, OBS-DP, OBS-U, OBS-DA; xl: Observation::definitely "
            "present, ...).",
        )
    return labels


def normalise_label(label: str) -> str:
    """The kg_entities label (ANAT-DP, OBS-DP, OBS-U, OBS-DA) of a RadGraph v1 or RadGraph-XL label.

    Anatomy of any status becomes ANAT-DP and ``::measurement::`` is dropped (kg_entities has
    no place for either). Raises ValueError naming the accepted labels for anything else.
    """
    if isinstance(label, str) and label in LABEL_ID:
        return label
    m = _XL.fullmatch(label) if isinstance(label, str) else None
    if m is None:
        raise ValueError(f"label {label!r} is not a RadGraph label (accepted: {ACCEPTED_LABELS})")
    return "ANAT-DP" if m.group(1) == "Anatomy" else _XL_OBSERVATION[m.group(2)]


def export_label(label: str, labels: str = "v1") -> str:
    """``label`` (either set) as written in the ``labels`` set (``v1`` or ``xl``)."""
    internal = normalise_label(label)
    return XL_LABEL[internal] if labels == "xl" else internal


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) of every token of ``text``."""
    return [(m.group(0), m.start(), m.end()) for m in TOKEN.finditer(text)]


def export_report(
    text: str,
    entities: Sequence[Mapping[str, Any]],
    relations: Sequence[Mapping[str, Any]],
    labels: str = "v1",
) -> dict[str, Any]:
    """One report as a RadGraph document. ``text`` is reports.text; entity offsets point into it.
    ``labels``: the label set written, ``v1`` (ANAT-DP...) or ``xl`` (Observation::definitely present...).

    Raises ValueError when an entity does not cover at least one token or has no RadGraph label,
    PipelineError(E_CONFIG_VALUE) for an unknown ``labels``.
    """
    check_label_set(labels)
    tokens = tokenize(text)
    starts = [t[1] for t in tokens]
    out: dict[str, Any] = {}
    for e in sorted(entities, key=lambda e: entity_order(e["entity_id"])):
        first = bisect.bisect_right(starts, e["start"]) - 1
        last = bisect.bisect_right(starts, e["end"] - 1) - 1
        if first < 0 or last < first:
            raise ValueError(f"entity {e['entity_id']} [{e['start']}, {e['end']}) covers no token")
        out[e["entity_id"]] = {
            "tokens": " ".join(t[0] for t in tokens[first : last + 1]),
            "label": export_label(e["label"], labels),
            "start_ix": first,
            "end_ix": last,
            "relations": [],
        }
    for r in sorted(relations, key=lambda r: (entity_order(r["source_id"]), entity_order(r["target_id"]))):
        out[r["source_id"]]["relations"].append([r["relation"], r["target_id"]])
    return {"text": " ".join(t[0] for t in tokens), "entities": out}


def _align(doc_text: str, report_text: str) -> list[tuple[int, int]]:
    """Character spans in ``report_text`` of the whitespace-separated tokens of ``doc_text``."""
    spans, cursor = [], 0
    for token in doc_text.split():
        at = report_text.find(token, cursor)
        if at < 0:
            raise ValueError(f"token {token!r} (after offset {cursor}) is not in the report text")
        spans.append((at, at + len(token)))
        cursor = at + len(token)
    return spans


def name_concept(words: str, label: str) -> tuple[str, str]:
    """(kind, concept) of an imported entity from its words, via the vocabulary's surface terms."""
    key = " ".join(words.lower().split())
    vocab = load_vocabulary()
    found = vocab.surface.get(key) or vocab.surface.get(key.rstrip("s")) or {}
    prefer = (
        ("anatomy", "modifier", "observation")
        if label == "ANAT-DP"
        else ("observation", "modifier", "anatomy")
    )
    for kind in prefer:
        if kind in found:
            return kind, found[kind]
    return ("anatomy" if label == "ANAT-DP" else "observation"), key.replace(" ", "_")


def import_report(
    report_id: str,
    doc: Mapping[str, Any],
    report_text: str,
    sentences: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Entity and relation rows (kg_* columns) of one RadGraph document matched to reports.text.

    Labels may be RadGraph v1's or RadGraph-XL's (normalised to v1's, see :func:`normalise_label`).
    ``sentences``: (starts, ends, sentence_idx) of the report's sentences, sorted by start, to
    fill sentence_idx. Raises ValueError when the document does not fit the text or is malformed.
    """
    vocab = load_vocabulary()
    entities_in = doc.get("entities")
    if entities_in is None and isinstance(doc.get("labeler_1"), Mapping):
        entities_in = doc["labeler_1"].get("entities")  # RadGraph's test set: two annotators
    if not isinstance(entities_in, Mapping):
        raise ValueError("no 'entities' map")
    spans = _align(str(doc.get("text", "")), report_text)
    entities, relations = [], []
    for eid in sorted(entities_in, key=lambda k: entity_order(str(k))):
        e = entities_in[eid]
        first, last = int(e["start_ix"]), int(e["end_ix"])
        try:
            label = normalise_label(e["label"])
        except ValueError as exc:
            raise ValueError(f"entity {eid}: {exc}") from None
        if not 0 <= first <= last < len(spans):
            raise ValueError(f"entity {eid}: token range {first}..{last} outside the text")
        start, end = spans[first][0], spans[last][1]
        kind, concept = name_concept(report_text[start:end], label)
        entities.append(
            {
                "report_id": report_id,
                "entity_id": str(eid),
                "label": label,
                "label_id": LABEL_ID[label],
                "kind": kind,
                "text": report_text[start:end],
                "start": start,
                "end": end,
                "concept": concept,
                "concept_id": concept_id(vocab, kind, concept),
                "sentence_idx": sentence_of(*sentences, start) if sentences else None,
                "source": "radgraph",
            }
        )
    known = {e["entity_id"] for e in entities}
    seen = set()
    for e in entities:
        for relation, target in entities_in[e["entity_id"]].get("relations", []):
            target = str(target)
            if relation not in RELATION_ID or target not in known:
                raise ValueError(f"entity {e['entity_id']}: bad relation {[relation, target]}")
            if (e["entity_id"], target) in seen:
                continue  # one relation per ordered pair (kg_relations key): the first is kept
            seen.add((e["entity_id"], target))
            relations.append(
                {
                    "report_id": report_id,
                    "source_id": e["entity_id"],
                    "target_id": target,
                    "relation": relation,
                    "relation_id": RELATION_ID[relation],
                }
            )
    relations.sort(key=lambda r: (entity_order(r["source_id"]), entity_order(r["target_id"])))
    return entities, relations


def read_radgraph(path: str) -> dict[str, dict[str, Any]]:
    """A RadGraph JSON file (a map doc key -> document, a list of documents with ``doc_key``, or
    JSON lines) as report id -> document. A doc key like ``p18/p18004941/s58821758.txt`` is also
    reachable by its stem ``s58821758``. Raises PipelineError(E_RADGRAPH) when unreadable."""
    try:
        with fsspec.open(path, "rt") as fh:
            raw_text = fh.read()
    except OSError as exc:
        raise PipelineError("E_RADGRAPH", f"cannot read stages.graph.radgraph_json={path}: {exc}") from exc
    try:
        raw: Any = json.loads(raw_text)
    except json.JSONDecodeError:
        try:
            raw = [json.loads(line) for line in raw_text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise PipelineError("E_RADGRAPH", f"{path} is neither JSON nor JSON lines: {exc}") from exc
    items = (
        raw.items()
        if isinstance(raw, Mapping)
        else ((d.get("doc_key"), d) for d in raw if isinstance(d, Mapping))
    )
    docs: dict[str, dict[str, Any]] = {}
    for key, doc in items:
        if key is None or not isinstance(doc, Mapping):
            continue
        docs[str(key)] = dict(doc)
        docs.setdefault(PurePosixPath(str(key)).stem, dict(doc))
    if not docs:
        raise PipelineError("E_RADGRAPH", f"{path} holds no RadGraph document")
    return docs


def export_corpus(
    texts: Mapping[str, str],
    entities: Sequence[Mapping[str, Any]],
    relations: Sequence[Mapping[str, Any]],
    labels: str = "v1",
) -> dict[str, dict[str, Any]]:
    """RadGraph documents of every report of ``entities`` (report_id -> document), labels in the
    ``labels`` set (``v1`` or ``xl``)."""
    check_label_set(labels)
    ents: dict[str, list] = {}
    rels: dict[str, list] = {}
    for e in entities:
        ents.setdefault(e["report_id"], []).append(e)
    for r in relations:
        rels.setdefault(r["report_id"], []).append(r)
    return {rid: export_report(texts[rid], ents[rid], rels.get(rid, []), labels) for rid in sorted(ents)}
