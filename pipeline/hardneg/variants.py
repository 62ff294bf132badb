"""Report variants after CXR-Align (pure): comparisons removed, omitted and negated reports.

* ``clean``: a sentence with no finding that only compares with a prior study is dropped
  ("Comparison is made to the prior study."); temporal phrases are stripped from the others
  ("unchanged", "new", "again", "since the prior study"), the finding kept ("The effusion is
  unchanged." -> "The effusion is present."). A strip that leaves no sentence keeps the original.
* ``omitted``: the cleaned report without the sentences that mention the finding.
* ``negated``: the omitted report plus one denial sentence from a template ("No {finding} is
  seen."), placed as CXR-Align places it (:func:`locations`): ``first``, ``middle`` (strictly
  inside: a sentence before it and one after), ``last``, or ``add`` when nothing else of the report
  is left (the negated report is the denial alone, the omitted report empty). Template and place
  are drawn from a hash of the seed, the report and the finding, so a run is deterministic and
  needs no random state.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

from pipeline.hardneg.rewrite import _plural, load_rules, tidy

LOCATIONS = ("first", "middle", "last", "add")


def draw(seed: int, *parts: str, n: int) -> int:
    """A deterministic choice in range(n) from the seed and ``parts``."""
    digest = hashlib.blake2b(f"{seed}|{'|'.join(parts)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


@functools.lru_cache(maxsize=1 << 16)
def clean(text: str, has_finding: bool) -> str | None:
    """The sentence with comparisons stripped; None when it only compares and is dropped."""
    rules = load_rules()
    if not has_finding and any(p.search(text) for p in rules.only_compares):
        return None
    out = text
    for pattern, repl in rules.strip:
        out = pattern.sub(repl, out)
    out = tidy(out.strip())
    if len(out.rstrip(".").split()) < 1 or out in {".", ""}:
        return text
    if out[-1] not in ".!?;:":
        out += "."
    return out


def denial(finding_phrase: str, template: str) -> str:
    """One denial sentence: ``template`` with {finding}, {Finding} and {is} filled."""
    phrase = finding_phrase.strip()
    be = "are" if _plural(phrase) else "is"
    lower = phrase if len(phrase) > 1 and phrase[1].isupper() else phrase[:1].lower() + phrase[1:]
    return tidy(
        template.replace("{Finding}", phrase[:1].upper() + phrase[1:])
        .replace("{finding}", lower)
        .replace("{is}", be)
    )


def site_phrase(finding: str, phrase: str, modifiers: Sequence[dict] | None) -> str:
    """The mention's phrase, naming the site that refined its finding when the phrase does not.

    The engine reads "fractures of the right 5th ribs" as a rib fracture through the site; a denial
    of the bare "fractures" would deny a fracture, not a rib fracture: "fractures of the rib".
    """
    words = {w.rstrip("s") for w in re.findall(r"[a-z]+", phrase.lower())}
    missing = [w for w in finding.split("_") if w.rstrip("s") not in words]
    for mod in modifiers or ():
        value = str(mod["value"])
        if mod["kind"] == "anatomy" and any(
            value.startswith(w[:4]) or w.startswith(value[:4]) for w in missing
        ):
            return f"{phrase} of the {value.replace('_', ' ')}"
    return phrase


def locations(n: int) -> tuple[str, ...]:
    """The places a denial can take among ``n`` remaining sentences: ``add`` alone when none is
    left; ``first`` or ``last`` beside one (a middle there would be first or last); ``first``,
    ``middle`` or ``last`` beside two or more."""
    if n == 0:
        return ("add",)
    if n == 1:
        return ("first", "last")
    return ("first", "middle", "last")


def place(sentences: Sequence[str], sentence: str, location: str) -> list[str]:
    """``sentences`` with ``sentence`` inserted at ``location`` (``middle``: after the first half,
    never first or last; ``add``: ``sentence`` alone).

    Raises ValueError when ``location`` is not one of :func:`locations` for ``len(sentences)``.
    """
    out = list(sentences)
    allowed = locations(len(out))
    if location not in allowed:
        raise ValueError(
            f"a denial beside {len(out)} sentence(s) goes {' or '.join(allowed)}, not {location!r}"
        )
    # middle: len // 2 lies in [1, len - 1] once len >= 2, so a sentence is on each side
    at = {"first": 0, "middle": len(out) // 2, "last": len(out), "add": 0}[location]
    out.insert(at, sentence)
    return out
