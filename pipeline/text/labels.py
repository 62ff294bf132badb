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

Both tables are computed column-wise over the counted mentions (numpy for labels, an Arrow
group-by for findings), never a Python object per mention; ``provenance`` is taken from the
mentions table in Arrow by the row numbers of the mentions each label cites.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

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


def typed_table(columns: Mapping[str, Sequence | pa.Array], name: str) -> pa.Table:
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


_BY_RANK = tuple(sorted(RANK, key=RANK.__getitem__))  # status RANK[s] is at index RANK[s] - 1
_VALUE_OF_RANK = np.array([np.nan, *(VALUES[s] for s in _BY_RANK)])  # by rank; 0: nothing counted


def _counted(mentions: pa.Table, columns: tuple[str, ...]) -> tuple[np.ndarray, dict[str, pa.ChunkedArray]]:
    """Row numbers of the counted mentions (``in_labeled_section``), in table order, and their
    ``columns`` as Arrow arrays."""
    flags = pc.fill_null(mentions.column("in_labeled_section"), False)
    rows = np.flatnonzero(np.asarray(flags.to_numpy(zero_copy_only=False), dtype=bool))
    table = mentions.select(list(columns)).take(rows)
    return rows, {c: table.column(c) for c in columns}


def _index(values: pa.ChunkedArray, of: Sequence[str]) -> np.ndarray:
    """Each value's index in ``of`` (-1 where it is missing or null)."""
    found = pc.index_in(values, value_set=pa.array(list(of), pa.string()))
    return np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)


def _ranks(statuses: pa.ChunkedArray) -> np.ndarray:
    """Each status's RANK (0 where it is null)."""
    return _index(statuses, _BY_RANK) + 1


def _provenance(
    mentions: pa.Table, rows: np.ndarray, observations: pa.Array, values: np.ndarray, offsets: np.ndarray
) -> pa.Array:
    """``labels.provenance``: list ``k`` holds entries ``offsets[k]:offsets[k + 1]``, entry ``i``
    the mention at row ``rows[i]`` cited for ``observations[i]`` with ``values[i]``."""
    target = load_schema("labels").arrow().field("provenance").type
    taken = mentions.select(list(_PROVENANCE_FROM_MENTION)).take(rows)
    fields = {"observation": observations, "value": pa.array(values, pa.float64())}
    fields.update((c, taken.column(c).combine_chunks()) for c in _PROVENANCE_FROM_MENTION)
    entry = target.value_type
    struct = pa.StructArray.from_arrays([fields[f.name].cast(f.type) for f in entry], fields=list(entry))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), struct, type=target)


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

    Column-wise over the counted mentions (numpy): no Python object per mention.
    """
    reports = list(dict.fromkeys(report_ids))  # each report's tallies once, even when repeated
    rows, col = _counted(mentions, ("report_id", "observation", "status", "finding"))
    report = _index(col["report_id"], reports)
    keep = report >= 0
    rows, report = rows[keep], report[keep]
    obs = _index(col["observation"], OBSERVATIONS)[keep]
    rank = _ranks(col["status"])[keep]
    n_reports, n_obs = len(reports), len(OBSERVATIONS)
    # per report and observation, the best rank (No Finding is never mentioned)
    no_finding = OBSERVATIONS.index(NO_FINDING)
    labelled = (obs >= 0) & (obs != no_finding)
    best = np.zeros((n_reports, n_obs), dtype=np.int64)
    np.maximum.at(best, (report[labelled], obs[labelled]), rank[labelled])
    cites = labelled & (rank == best[report, obs])
    # No Finding: the report has counted mentions and none blocks it; it cites every counted
    # mention but Support Devices
    support = obs == OBSERVATIONS.index(SUPPORT_DEVICES)
    finding = col["finding"].filter(pa.array(keep))
    quiet = pc.is_in(finding, value_set=pa.array(sorted(non_blocking), pa.string()))
    quiet = np.asarray(quiet.to_numpy(zero_copy_only=False), dtype=bool)
    blocking = (rank != 1) & ~support & ~quiet
    counted = np.bincount(report, minlength=n_reports) > 0
    blocked = np.bincount(report[blocking], minlength=n_reports) > 0
    clear = (counted | no_finding_without_mentions) & ~blocked
    best[:, no_finding] = np.where(clear, 3, 0)  # its value: 1.0, as a present rank
    cites_clear = ~support & clear[report]

    # provenance entries by (report, No Finding then the others in schema order, row)
    entry_report = np.concatenate([report[cites_clear], report[cites]])
    entry_obs = np.concatenate([np.full(int(cites_clear.sum()), no_finding), obs[cites]])
    entry_row = np.concatenate([rows[cites_clear], rows[cites]])
    order = np.lexsort((entry_row, entry_obs, entry_obs != no_finding, entry_report))
    entry_report, entry_obs, entry_row = entry_report[order], entry_obs[order], entry_row[order]
    # each output row (report_ids may repeat an id) takes its report's run of entries
    if len(reports) == len(report_ids):
        at = np.arange(n_reports)
    else:
        place = {r: k for k, r in enumerate(reports)}
        at = np.array([place[r] for r in report_ids], dtype=np.int64)
    per_report = np.bincount(entry_report, minlength=n_reports)
    first = np.cumsum(per_report) - per_report
    lengths = per_report[at]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    take = np.repeat(first[at] - offsets[:-1], lengths) + np.arange(offsets[-1])
    entry_report, entry_obs, entry_row = entry_report[take], entry_obs[take], entry_row[take]

    value = _VALUE_OF_RANK[best[at]]  # (rows, observations); nan: blank
    columns: dict[str, list | pa.Array] = {"report_id": pa.array(list(report_ids), pa.string())}
    for k, name in enumerate(OBSERVATIONS):
        columns[name] = pa.array(value[:, k], pa.float64(), from_pandas=True)
    cited_obs = pa.array(OBSERVATIONS, pa.string()).take(pa.array(entry_obs))
    cited_values = _VALUE_OF_RANK[best[entry_report, entry_obs]]
    columns["provenance"] = _provenance(mentions, entry_row, cited_obs, cited_values, offsets)
    return typed_table(columns, "labels")


def findings_table(mentions: pa.Table, observation_of: Mapping[str, str | None]) -> pa.Table:
    """One ``findings`` row per (report, fine finding) over counted mentions, same precedence,
    in the order the pairs first appear (an Arrow group-by).

    ``observation_of`` gives each finding's CheXpert observation (the lexicon's, not a mention's:
    a "lungs are clear" denial has no label but the opacity finding still has an observation).
    """
    rows, col = _counted(mentions, ("report_id", "finding", "status"))
    counted = pa.table(
        {
            "report_id": col["report_id"],
            "finding": col["finding"],
            "rank": pa.array(_ranks(col["status"])),
            "row": pa.array(rows),
        }
    )
    groups = counted.group_by(["report_id", "finding"], use_threads=False).aggregate(
        [("rank", "max"), ("row", "count"), ("row", "min")]
    )
    groups = groups.take(pc.sort_indices(groups.column("row_min")))
    known = list(observation_of)
    observation = pa.array([observation_of[f] for f in known], pa.string()).take(
        pc.index_in(groups.column("finding"), value_set=pa.array(known, pa.string()))
    )
    return typed_table(
        {
            "report_id": groups.column("report_id").combine_chunks(),
            "finding": groups.column("finding").combine_chunks(),
            "observation": observation,
            "status": pa.array(_BY_RANK, pa.string()).take(
                pc.subtract(groups.column("rank_max"), 1).combine_chunks()
            ),
            "n_mentions": groups.column("row_count").combine_chunks(),
        },
        "findings",
    )
