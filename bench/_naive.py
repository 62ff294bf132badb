"""The naive design-card pipeline the issues compare against: spaCy blank + an EntityRuler fed the
CheXpert labeler's mention phrases (read at run time from shared/data) + negspacy's default
``en_clinical`` termset. No section split, no uncertainty, one process."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path


def build_naive_nlp(data: Path):
    """The naive pipeline; ``data`` is ../shared/data (the labeler's phrase files are read there)."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    patterns = []
    for path in sorted((data / "rules" / "chexpert-labeler" / "phrases" / "mention").glob("*.txt")):
        label = path.stem.replace("_", " ").title()
        for line in path.read_text().splitlines():
            words = line.replace("_", " ").lower().split()
            if not words:
                continue
            # The labeler matches its phrases as text prefixes ("atelecta" finds "atelectasis"):
            # the last word is a prefix, the others whole words.
            pattern = [{"LOWER": w} for w in words[:-1]] + [{"LOWER": {"REGEX": "^" + re.escape(words[-1])}}]
            patterns.append({"label": label, "pattern": pattern})
    ruler.add_patterns(patterns)
    nlp.add_pipe("negex")
    return nlp


def naive_labels(nlp, texts: Iterable[str]) -> list[dict[str, float]]:
    """Per text: observation -> 1.0 (any non-negated mention) or 0.0 (only negated mentions)."""
    out = []
    for doc in nlp.pipe(texts, batch_size=64):
        labels: dict[str, float] = {}
        for ent in doc.ents:
            value = 0.0 if ent._.negex else 1.0
            labels[ent.label_] = max(labels.get(ent.label_, -1.0), value)
        out.append(labels)
    return out


def naive_rate(data: Path, texts: list[str]) -> float:
    """Reports/s of the naive pipeline on ``texts`` in this process (built and warmed first)."""
    import time

    nlp = build_naive_nlp(data)
    naive_labels(nlp, texts[:50])
    start = time.perf_counter()
    naive_labels(nlp, texts)
    return len(texts) / (time.perf_counter() - start)
