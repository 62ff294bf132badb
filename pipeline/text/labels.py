"""CheXpert aggregation: mentions to one labels row per report, and the fine findings table.

Per observation, over the mentions that count (``in_labeled_section``): 1.0 if any mention is
present, else -1.0 if any is uncertain, else 0.0 if any is absent, else null (ARCHITECTURE §4).
``No Finding`` is 1.0 when the report has counted mentions and none of them is a present or
uncertain finding that blocks No Finding (every finding except Support Devices and the few marked
``blocks_no_finding: false``); otherwise null, as in the CheXpert labeler, which never writes 0 for
No Finding. A report with no counted mention gets an all-blank row unless
``no_finding_without_mentions`` (the labeler's own behaviour) is set.

``provenance`` lists, for every non-blank observation, the mentions with the deciding status (for
No Finding 1.0: the counted mentions that were read and found non-positive).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import pyarrow as pa

from pipeline.core.schemas import conform, load_schema
from pipeline.text.lexicon import NO_FINDING, OBSERVATIONS, SUPPORT_DEVICES

VALUES: dict[str, float] = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}
# Precedence of statuses: present beats uncertain beats absent.
RANK: dict[str, int] = {"present": 3, "uncertain": 2, "absent": 1}
_MENTION_COLUMNS = (
    "report_id",
    "sentence_idx",
    "start",
    "finding",
    "observation",
    "status",
    "cue",
    "rule",
    "in_labeled_section",
)


def typed_table(columns: Mapping[str, list], name: str) -> pa.Table:
    """Python columns to the exact Arrow types of dataset ``name``, then :func:`conform` checks."""
    target = load_schema(name).arrow()
    arrays = [pa.array(columns[f.name], type=f.type) for f in target]
    return conform(pa.Table.from_arrays(arrays, schema=target), name)


def aggregate_status(statuses: Iterable[str]) -> str | None:
    """The deciding status among ``statuses`` (present > uncertain > absent), None when empty."""
    best = None
    for status in statuses:
        if best is None or RANK[status] > RANK[best]:
            best = status
    return best


def _rows(mentions: pa.Table) -> list[dict]:
    cols = {c: mentions.column(c).to_pylist() for c in _MENTION_COLUMNS}
    return [dict(zip(_MENTION_COLUMNS, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _counted_by_report(mentions: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in _rows(mentions):
        if row["in_labeled_section"]:
            out.setdefault(row["report_id"], []).append(row)
    return out


def _prov(observation: str, value: float, m: dict) -> dict:
    return {
        "observation": observation,
        "value": value,
        "sentence_idx": m["sentence_idx"],
        "start": m["start"],
        "finding": m["finding"],
        "status": m["status"],
        "cue": m["cue"],
        "rule": m["rule"],
    }


def label_table(
    mentions: pa.Table,
    report_ids: Sequence[str],
    *,
    non_blocking: Collection[str] = (),
    no_finding_without_mentions: bool = False,
) -> pa.Table:
    """One ``labels`` row per id in ``report_ids`` (in that order), conformed to the schema.

    ``mentions`` follows schemas/mentions.yaml; only rows with ``in_labeled_section`` count.
    ``non_blocking`` names findings that never block No Finding (besides Support Devices).
    Raises PipelineError(E_SCHEMA_MISMATCH) if ``report_ids`` repeats an id.
    """
    by_report = _counted_by_report(mentions)
    columns: dict[str, list] = {"report_id": list(report_ids)}
    for obs in OBSERVATIONS:
        columns[obs] = []
    columns["provenance"] = []
    non_blocking = frozenset(non_blocking)
    for rid in report_ids:
        counted = by_report.get(rid, [])
        provenance: list[dict] = []
        by_obs: dict[str, list[dict]] = {}
        blocked = False
        for m in counted:
            if m["observation"] is not None:
                by_obs.setdefault(m["observation"], []).append(m)
            if (
                m["status"] != "absent"
                and m["observation"] != SUPPORT_DEVICES
                and m["finding"] not in non_blocking
            ):
                blocked = True
        for obs in OBSERVATIONS[1:]:
            group = by_obs.get(obs)
            status = aggregate_status(m["status"] for m in group) if group else None
            if status is None:
                columns[obs].append(None)
                continue
            value = VALUES[status]
            columns[obs].append(value)
            provenance.extend(_prov(obs, value, m) for m in group if m["status"] == status)
        if (counted or no_finding_without_mentions) and not blocked:
            columns[NO_FINDING].append(1.0)
            provenance[:0] = [
                _prov(NO_FINDING, 1.0, m) for m in counted if m["observation"] != SUPPORT_DEVICES
            ]
        else:
            columns[NO_FINDING].append(None)
        columns["provenance"].append(provenance)
    return typed_table(columns, "labels")


def findings_table(mentions: pa.Table, observation_of: Mapping[str, str | None]) -> pa.Table:
    """One ``findings`` row per (report, fine finding) over counted mentions, same precedence.

    ``observation_of`` gives each finding's CheXpert observation (the lexicon's, not a mention's:
    a "lungs are clear" denial has no label but the opacity finding still has an observation).
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for row in _rows(mentions):
        if row["in_labeled_section"]:
            groups.setdefault((row["report_id"], row["finding"]), []).append(row["status"])
    rids, finds, obs, statuses, counts = [], [], [], [], []
    for (rid, finding), group in groups.items():
        rids.append(rid)
        finds.append(finding)
        obs.append(observation_of.get(finding))
        statuses.append(aggregate_status(group))
        counts.append(len(group))
    return typed_table(
        {"report_id": rids, "finding": finds, "observation": obs, "status": statuses, "n_mentions": counts},
        "findings",
    )
