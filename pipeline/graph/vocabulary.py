"""The graph package's fixed vocabulary (vocabulary.yaml): concept hierarchy, regions, surface words.

Loaded once per process and validated on load: every parent is a concept, the hierarchy has no
cycle, every anatomy region is listed, every synonym names a concept.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class Vocabulary:
    """Concepts (slot order), their parents, regions and the surface terms of anatomy and modifiers."""

    version: int
    concepts: tuple[str, ...]
    parent: dict[str, str | None]
    regions: tuple[str, ...]
    anatomy_region: dict[str, str]
    anatomy_terms: dict[str, tuple[str, ...]]
    modifier_terms: dict[str, dict[str, tuple[str, ...]]]
    synonyms: dict[str, str]

    @functools.cached_property
    def slot(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.concepts)}

    @functools.cached_property
    def anatomy_index(self) -> dict[str, int]:
        """Anatomy concept -> its position in ``anatomy_terms`` (the GCN node feature)."""
        return {a: i for i, a in enumerate(self.anatomy_terms)}

    @functools.cached_property
    def roots(self) -> tuple[str, ...]:
        return tuple(c for c in self.concepts if self.parent[c] is None)

    def ancestors(self, concept: str) -> list[str]:
        """Parents of ``concept`` up to its root, nearest first; [] for a root or unknown concept."""
        out, cur = [], self.parent.get(concept)
        while cur is not None:
            out.append(cur)
            cur = self.parent[cur]
        return out

    def root(self, concept: str) -> str:
        """The root above ``concept`` (itself for a root); ``other_finding`` when unknown."""
        if concept not in self.parent:
            return "other_finding"
        chain = self.ancestors(concept)
        return chain[-1] if chain else concept

    def region(self, anatomy: str) -> str:
        return self.anatomy_region.get(anatomy, "other_region")

    @functools.cached_property
    def surface(self) -> dict[str, dict[str, str]]:
        """Lower-case surface text -> {kind: concept}, kind in anatomy/modifier/observation."""
        out: dict[str, dict[str, str]] = {}
        for word, concept in self.synonyms.items():
            out.setdefault(word, {}).setdefault("observation", concept)
        for concept in self.concepts:
            out.setdefault(concept.replace("_", " "), {}).setdefault("observation", concept)
        for kind, values in self.modifier_terms.items():
            for value, terms in values.items():
                for term in terms:
                    out.setdefault(term, {}).setdefault("modifier", f"{kind}:{value}")
        for anat, terms in self.anatomy_terms.items():
            for term in terms:
                out.setdefault(term, {}).setdefault("anatomy", anat)
        return out


def term_pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    """A case-insensitive, word-bounded regex matching any of ``terms`` (longest first)."""
    alts = sorted((re.escape(t).replace(r"\ ", r"\s+") for t in terms), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])", re.IGNORECASE)


@functools.cache
def load_vocabulary() -> Vocabulary:
    """The packaged vocabulary. Raises PipelineError(E_VOCABULARY) when the file is inconsistent."""
    raw = yaml.safe_load((resources.files("pipeline.graph") / "vocabulary.yaml").read_text())
    concepts = tuple(raw["concepts"])
    parent = dict(raw["concepts"])
    problems = [f"{c} -> {p}" for c, p in parent.items() if p is not None and p not in parent]
    for c in concepts:
        seen, cur = {c}, parent[c]
        while cur is not None:
            if cur in seen:
                problems.append(f"cycle through {c}")
                break
            seen.add(cur)
            cur = parent.get(cur)
    regions = tuple(raw["regions"])
    anatomy = raw["anatomy"]
    problems += [
        f"anatomy {a}: region {v['region']}" for a, v in anatomy.items() if v["region"] not in regions
    ]
    synonyms = {str(k).lower(): v for k, v in raw["synonyms"].items()}
    problems += [f"synonym {k} -> {v}" for k, v in synonyms.items() if v not in parent]
    if problems:
        raise PipelineError("E_VOCABULARY", f"pipeline/graph/vocabulary.yaml is inconsistent: {problems}")
    return Vocabulary(
        version=int(raw["version"]),
        concepts=concepts,
        parent=parent,
        regions=regions,
        anatomy_region={a: v["region"] for a, v in anatomy.items()},
        anatomy_terms={a: tuple(str(t).lower() for t in v["terms"]) for a, v in anatomy.items()},
        modifier_terms={
            kind: {value: tuple(str(t).lower() for t in terms) for value, terms in values.items()}
            for kind, values in raw["modifiers"].items()
        },
        synonyms=synonyms,
    )
