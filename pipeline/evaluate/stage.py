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
    parts = ctx.input_parts("labels")
    futures = ctx.client.map(_part_confusion, [ctx.out] * len(parts), parts, pure=False)
    total: Counter = Counter()
    n_labels = 0
    for counts, _compared, n in ctx.client.gather(futures):
        total.update(counts)
        n_labels += n
    # Every labels row is read and counted toward the comparison when an official row exists.
    ctx.commit(
        0,
        ctx.client.submit(
            commit_corpus_part,
            ctx.out,
            "agreement",
            0,
            {"label_agreement": to_table(total)},
            ctx.fingerprint,
            n_labels,
            n_labels,
            pure=False,
        ).result(),
    )
