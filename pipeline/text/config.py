"""The text stages' configs, apart from the engine: registering the stages (on the client, on
every worker, for a run with nothing to do) must not import spaCy, seconds at each start."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.registry import CONTENT

INDICATION_SECTIONS: tuple[str, ...] = (
    "indication",
    "history",
    "clinical_history",
    "reason",
    "reason_for_exam",
    "reason_for_study",
    "clinical_information",
    "clinical_indication",
)


@dataclass(frozen=True)
class ExtractConfig:
    """Config of the extract stage.

    labeled_sections: section names whose mentions count toward labels; empty (default) means
        the sections the parse stage marked ``is_labeled``.
    excluded_sections: section names that never count, whatever the above says.
    no_finding_without_mentions: give No Finding 1.0 to a report with no counted mention (the
        CheXpert labeler's behaviour); default False: such a report's row is all blank.
    lexicon_dir: a lexicon folder in the bundled format (None: the bundled lexicon).
    cache_size: distinct sentence texts memoised per process.
    """

    labeled_sections: tuple[str, ...] = ()
    excluded_sections: tuple[str, ...] = INDICATION_SECTIONS
    no_finding_without_mentions: bool = False
    lexicon_dir: str | None = field(default=None, metadata={CONTENT: True})
    cache_size: int = 100_000


@dataclass(frozen=True)
class RereadConfig:
    """lexicon_dir: the lexicon folder extract used (None: the bundled one); set both alike."""

    lexicon_dir: str | None = field(default=None, metadata={CONTENT: True})
    cache_size: int = 100_000
