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

Both tables are folded over the mentions a window of rows at a time, keeping per report only the
row numbers of the mentions it will cite; ``provenance`` is then taken from the mentions table in
Arrow. So a report of a million mentions never becomes a million Python dicts.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.schemas import conform, load_schema
from pipeline.text.lexicon import NO_FINDING, OBSERVATIONS, SUPPORT_DEVICES

VALUES: dict[str, float] = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}
# Precedence of statuses: present beats uncertain beats absent.
RANK: dict[str, int] = {"present": 3, "uncertain": 2, "absent": 1}
# what a provenance entry copies from its mention
_PROVENANCE_FROM_MENTION = ("sentence_idx", "start", "finding", "status", "cue", "rule")
_ROWS = 8_192  # counted mentions read into Python at a time


def typed_table(columns: Mapping[str, list | pa.Array], name: str) -> pa.Table:
    """Python columns (or Arrow arrays) to the exact Arrow types of dataset ``name``, then
    :func:`conform` checks."""
    target = load_schema(name).arrow()
    arrays = [
        col.cast(f.type) if isinstance(col := columns[f.name], pa.Array) else pa.array(col, type=f.type)
        for f in target
    ]
    return conform(pa.Table.from_arrays(arrays, schema=target), name)


def aggregate_status(statuses: Iterable[str]) -> str | None:
    """The deciding status among ``statuses`` (present > uncertain > absent), None when empty."""
    best = None
    for status in statuses:
        if best is None or RANK[status] > RANK[best]:
            best = status
    return best


class _Tally:
    """One report's counted mentions so far, as row numbers into ``mentions``: per observation the
    best status and the rows with it; the rows No Finding would cite, until a mention blocks it."""

    __slots__ = ("counted", "by_obs", "clear")

    def __init__(self) -> None:
        self.counted = False
        self.by_obs: dict[str, tuple[str, array]] = {}
        self.clear: array | None = array("q")  # None once a mention blocks No Finding


def _counted(mentions: pa.Table, columns: tuple[str, ...]) -> Iterator[tuple[int, tuple]]:
    """(row number, values of ``columns``) of each counted mention (``in_labeled_section``), in
    table order; only ``_ROWS`` rows are Python objects at a time, whatever the table's size."""
    flags = pc.fill_null(mentions.column("in_labeled_section"), False)
    rows = np.flatnonzero(np.asarray(flags.to_numpy(zero_copy_only=False), dtype=bool))
    table = mentions.select(list(columns))
    for a in range(0, len(rows), _ROWS):
        window = rows[a : a + _ROWS]
        values = [table.column(c).take(window).to_pylist() for c in columns]
        yield from zip(window.tolist(), zip(*values, strict=True), strict=True)


def _provenance(
    mentions: pa.Table, rows: array, observations: list[str], values: list[float], offsets: list[int]
) -> pa.Array:
    """``labels.provenance``: list ``k`` holds entries ``offsets[k]:offsets[k + 1]``, entry ``i``
    the mention at row ``rows[i]`` cited for ``observations[i]`` with ``values[i]``."""
    target = load_schema("labels").arrow().field("provenance").type
    taken = mentions.select(list(_PROVENANCE_FROM_MENTION)).take(np.frombuffer(rows, dtype=np.int64))
    fields = {"observation": pa.array(observations, pa.string()), "value": pa.array(values, pa.float64())}
    fields.update((c, taken.column(c).combine_chunks()) for c in _PROVENANCE_FROM_MENTION)
    entry = target.value_type
    struct = pa.StructArray.from_arrays([fields[f.name].cast(f.type) for f in entry], fields=list(entry))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, type=target)


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
    non_blocking = frozenset(non_blocking)
    tallies: dict[str, _Tally] = {}
    for row, (rid, observation, status, finding) in _counted(
        mentions, ("report_id", "observation", "status", "finding")
    ):
        tally = tallies.get(rid)
        if tally is None:
            tally = tallies[rid] = _Tally()
        tally.counted = True
        if observation is not None:
            best = tally.by_obs.get(observation)
            if best is None or RANK[status] > RANK[best[0]]:
                tally.by_obs[observation] = (status, array("q", (row,)))
            elif status == best[0]:
                best[1].append(row)
        if tally.clear is not None:
            if status != "absent" and observation != SUPPORT_DEVICES and finding not in non_blocking:
                tally.clear = None
            elif observation != SUPPORT_DEVICES:
                tally.clear.append(row)

    columns: dict[str, list | pa.Array] = {"report_id": list(report_ids)}
    for obs in OBSERVATIONS:
        columns[obs] = []
    rows, cited_obs, cited_values, offsets = array("q"), [], [], [0]
    for rid in report_ids:
        tally = tallies.get(rid) or _Tally()
        if (tally.counted or no_finding_without_mentions) and tally.clear is not None:
            columns[NO_FINDING].append(1.0)
            rows.extend(tally.clear)
            cited_obs += [NO_FINDING] * len(tally.clear)
            cited_values += [1.0] * len(tally.clear)
        else:
            columns[NO_FINDING].append(None)
        for obs in OBSERVATIONS[1:]:
            best = tally.by_obs.get(obs)
            if best is None:
                columns[obs].append(None)
                continue
            value = VALUES[best[0]]
            columns[obs].append(value)
            rows.extend(best[1])
            cited_obs += [obs] * len(best[1])
            cited_values += [value] * len(best[1])
        offsets.append(len(rows))
    columns["provenance"] = _provenance(mentions, rows, cited_obs, cited_values, offsets)
    return typed_table(columns, "labels")


def findings_table(mentions: pa.Table, observation_of: Mapping[str, str | None]) -> pa.Table:
    """One ``findings`` row per (report, fine finding) over counted mentions, same precedence.

    ``observation_of`` gives each finding's CheXpert observation (the lexicon's, not a mention's:
    a "lungs are clear" denial has no label but the opacity finding still has an observation).
    """
    groups: dict[tuple[str, str], list] = {}  # (report, finding) -> [best status, mentions]
    for _, (rid, finding, status) in _counted(mentions, ("report_id", "finding", "status")):
        group = groups.get((rid, finding))
        if group is None:
            groups[(rid, finding)] = [status, 1]
            continue
        group[1] += 1
        if RANK[status] > RANK[group[0]]:
            group[0] = status
    rids, finds, obs, statuses, counts = [], [], [], [], []
    for (rid, finding), (status, n) in groups.items():
        rids.append(rid)
        finds.append(finding)
        obs.append(observation_of.get(finding))
        statuses.append(status)
        counts.append(n)
    return typed_table(
        {"report_id": rids, "finding": finds, "observation": obs, "status": statuses, "n_mentions": counts},
        "findings",
    )
