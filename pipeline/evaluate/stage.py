"""The `agreement` stage: our labels against the dump's official labels, as a confusion table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipeline.core.io import Store
from pipeline.core.registry import corpus_stage
from pipeline.core.runner import CorpusContext, commit_corpus_part
from pipeline.evaluate.agreement import confusion, to_table


@dataclass(frozen=True)
class AgreementConfig:
    pass


def _part_confusion(out: str, index: int) -> tuple[Counter, int, int]:
    store = Store(out)
    labels = store.read_part("labels", index)
    official = store.read_part("official_labels", index)
    counts, compared = confusion(labels, official)
    return counts, compared, labels.num_rows


@corpus_stage(
    "agreement",
    version=1,
    inputs=("labels", "official_labels"),
    outputs=("label_agreement",),
    config=AgreementConfig,
)
def agreement(ctx: CorpusContext, *, config: AgreementConfig) -> Any:
    """Confusion over 1 / 0 / -1 / blank per labeler and observation (empty without official labels)."""
    # Only parts with official labels have anything to compare (a table of reports has none):
    # their Parquet footers say so without reading them, and the rest costs no task at all.
    parts = [i for i in ctx.input_parts("official_labels") if _rows(ctx.store, "official_labels", i)]
    total: Counter = Counter()
    if parts:
        futures = ctx.client.map(_part_confusion, [ctx.out] * len(parts), parts, pure=False)
        for counts, _compared, _n in ctx.client.gather(futures):
            total.update(counts)
    # Every labels row counts as read: compared when an official row exists, else nothing to do.
    n_labels = int(ctx.store.read_json(ctx.store.manifest_path("labels"))["rows"])
    ctx.commit(
        0,
        commit_corpus_part(
            ctx.out, "agreement", 0, {"label_agreement": to_table(total)}, ctx.fingerprint, n_labels, n_labels
        ),
    )


def _rows(store: Store, dataset: str, index: int) -> int:
    with store.parquet_file(store.part_path(dataset, index)) as pf:
        return int(pf.metadata.num_rows)
