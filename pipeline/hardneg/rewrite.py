"""Sentence polarity flips: one sentence, one finding, its status turned (pure, no I/O).

A flip reads what the text engine recorded about the sentence (mentions v2: span, status, rule,
the deciding cue's span and the words it gave the mention) and edits the words that carry the
status, leaving anatomy, laterality and the rest of the sentence alone. Families (``method``):

* ``cue``: the deciding negation or hedge cue is replaced by the rule of rewrites.yaml for its
  text and direction ("No pneumothorax." -> "There is pneumothorax."; "may represent pneumonia"
  -> "represents pneumonia"; "pneumothorax has resolved" -> "pneumothorax has persisted");
* ``list``: a cue shared by several findings ("No consolidation, effusion, or pneumothorax.")
  moves the target out of the list: "There is effusion, but no consolidation or pneumothorax.";
* ``qualifier``: a normal phrasing or a qualified structure flips its qualifier ("Heart size is
  normal." <-> "Heart size is enlarged."; "The heart is enlarged." -> "The heart is not enlarged.");
* ``there_is_no``: "There is a small left pleural effusion." -> "There is no left pleural effusion.";
* ``no_prefix``: a sentence that starts with the finding's phrase: "Small left effusion." ->
  "No left effusion."; "A small effusion is seen." -> "No effusion is seen.";
* ``move_out``: the finding leaves a clause it shares with other present findings and comes
  back denied after "but": "Cardiomegaly and small effusion." -> "Cardiomegaly, but no effusion.".

Denying a present finding drops its size, severity and temporal words (rewrites.yaml
``drop_when_denied``): "no small effusion" is not what a radiologist writes. Every flip is read
again by the text engine downstream (the ``reread`` and ``hardneg`` stages) before it ships.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import yaml

from pipeline.core.errors import PipelineError

# target statuses of a flip, per original status ("uncertain to both")
FLIPS: dict[str, tuple[str, ...]] = {
    "present": ("absent",),
    "absent": ("present",),
    "uncertain": ("present", "absent"),
}
_ARTICLE = re.compile(r"(?i)(?:\b(?:a|an|the|some|any)\s+)$")
_THERE_IS = re.compile(r"(?i)\b(there\s+(?:is|are|has been|have been|remains|remain))\s+$")
# between two list items: a comma and/or a conjunction, then up to three premodifiers of the next
_SEPARATOR = re.compile(r"(?i)^\s*(?:,\s*|/\s*)?(?:(?:or|and|nor|and/or)\s+)?(?P<pre>(?:[\w.-]+\s+){0,3})$")
_ALTERNATIVE = re.compile(r"(?i)\b(?:versus|vs\.?|and/or|and or)(?!\w)")
_WORD_BEFORE = re.compile(r"([\w.-]+)\s+$")
_COPULA = re.compile(r"(?i)\b(?:is|are|was|were|be|appears?|remains?|seems?|looks?)\s+$")
# "could suggest", "may be": words next to a cue that must change with it
_MODAL_BEFORE = re.compile(r"(?i)\b(?:may|might|could|would|can)\s+$")
_BE_AFTER = re.compile(r"(?i)^\s+(?:be|have)\b")
# the scope terminators of the text lexicon (negation.yaml) that end a clause; a copy, because
# stage packages meet only through datasets
_TERMINATOR = re.compile(r"(?i)[.;]|\b(?:but|however|although|though|whereas|while)\b")
_CLAUSE_END = re.compile(r"\s*(?:[.;:!?]|$)")
# words that end a run of premodifiers when walking back from a finding
_STOP = frozenset(
    [
        "there",
        "is",
        "are",
        "was",
        "were",
        "a",
        "an",
        "the",
        "some",
        "any",
        "and",
        "or",
        "nor",
        "with",
        "without",
        "of",
        "in",
        "at",
        "no",
        "not",
        "has",
        "have",
        "had",
        "been",
        "be",
        "seen",
        "noted",
        "to",
        "for",
        "but",
        "by",
        "on",
        "as",
        "which",
        "may",
        "might",
        "could",
        "represent",
        "reflect",
        "from",
        "since",
        "than",
    ]
)


@dataclass(frozen=True)
class Rules:
    """rewrites.yaml, compiled."""

    cue: dict[tuple[str, str], tuple[tuple[re.Pattern[str], str], ...]]
    qualifier: dict[str, str]
    drop_when_denied: frozenset[str]
    denials: dict[str, tuple[str, ...]]
    only_compares: tuple[re.Pattern[str], ...]
    strip: tuple[tuple[re.Pattern[str], str], ...]


@functools.cache
def load_rules() -> Rules:
    """The packaged rewrite rules. Raises PipelineError(E_REWRITES) naming a bad entry."""
    raw = yaml.safe_load((resources.files("pipeline.hardneg") / "rewrites.yaml").read_text())
    where = "pipeline/hardneg/rewrites.yaml"
    try:
        cue = {}
        for flip, directions in raw["cue_rules"].items():
            for direction, rules in directions.items():
                cue[(flip, direction)] = tuple((re.compile(p), r) for p, r in rules)
        denials = {k: tuple(v) for k, v in raw["denials"].items()}
        for name, templates in denials.items():
            for t in templates:
                if "{finding}" not in t.lower():
                    raise ValueError(f"denial template {t!r} ({name}) lacks {{finding}}")
        if set(denials.get("train", ())) & set(denials.get("benchmark", ())):
            raise ValueError("the train and benchmark denial templates must be disjoint")
        comparisons = raw["comparisons"]
        return Rules(
            cue=cue,
            qualifier=dict(raw["qualifier_rules"]),
            drop_when_denied=frozenset(raw["drop_when_denied"]),
            denials=denials,
            only_compares=tuple(re.compile(p, re.IGNORECASE) for p in comparisons["only_compares"]),
            strip=tuple((re.compile(p, re.IGNORECASE), r) for p, r in comparisons["strip"]),
        )
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise PipelineError("E_REWRITES", f"{where} is invalid: {exc!r}. Fix the entry named.") from exc


@dataclass(frozen=True)
class Flip:
    """One rewritten sentence for one finding."""

    finding: str
    original_status: str
    flipped_status: str
    method: str
    text: str


def _plural(phrase: str) -> bool:
    last = phrase.split()[-1].lower() if phrase.split() else ""
    return last.endswith("s") and not last.endswith(("ss", "is", "us", "ous"))


def _lower_first(text: str) -> str:
    # keep acronyms ("ET tube", "PICC")
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


_SPACE_BEFORE_STOP = re.compile(r" ([,.;:?])")
_COMMA_STOP = re.compile(r", ?([.;])")
_LEADING = re.compile(r"^[ ,;]+")
_DOUBLE_COMMA = re.compile(r", ?,")


def tidy(text: str) -> str:
    """Collapse the gaps an edit leaves (and line breaks) and start with a capital letter."""
    # str.split() splits on exactly the characters of re's \s; after it, every gap is one space
    text = _SPACE_BEFORE_STOP.sub(r"\1", " ".join(text.split()))
    if "," in text:
        text = _COMMA_STOP.sub(r"\1", text)
    text = _LEADING.sub("", text)
    if "," in text:
        text = _DOUBLE_COMMA.sub(",", text)
    return text[:1].upper() + text[1:]


def _sub(text: str, a: int, b: int, new: str) -> str:
    return text[:a] + new + text[b:]


class Sentence:
    """A sentence and its mentions, offsets relative to the sentence."""

    def __init__(self, text: str, mentions: Sequence[Mapping[str, Any]], base: int = 0) -> None:
        self.text = text
        self.mentions = []
        for m in mentions:
            words = [
                {**w, "start": w["start"] - base, "end": w["end"] - base} for w in (m.get("modifiers") or ())
            ]
            self.mentions.append(
                {
                    **m,
                    "start": m["start"] - base,
                    "end": m["end"] - base,
                    "cue_start": None if m.get("cue_start") is None else m["cue_start"] - base,
                    "cue_end": None if m.get("cue_end") is None else m["cue_end"] - base,
                    "modifiers": words,
                }
            )

    def phrase(self, m: Mapping[str, Any], *, denied: bool) -> tuple[int, str]:
        """(start, text) of the mention's noun phrase: its premodifiers, an article, the mention.

        ``denied``: leave out the words a denial drops (size, severity, temporal) and the article.
        """
        text, start = self.text, m["start"]
        before = sorted((w for w in m["modifiers"] if w["end"] <= m["start"]), key=lambda w: -w["end"])
        kept: list[tuple[int, int]] = []
        for w in before:
            if w["end"] > start or not re.fullmatch(r"[\s-]*", text[w["end"] : start]):
                break
            start = w["start"]
            if not (denied and w["kind"] in load_rules().drop_when_denied):
                kept.append((w["start"], w["end"]))
        art = _ARTICLE.search(text, 0, start)
        phrase_start = art.start() if art else start
        words = [text[a:b] for a, b in sorted(kept)] + [text[m["start"] : m["end"]]]
        if not denied:
            return phrase_start, text[phrase_start : m["end"]]
        return phrase_start, " ".join(words)


@functools.lru_cache(maxsize=1 << 12)
def _cue_rule(flip: str, direction: str, cue: str) -> str | None:
    for pattern, repl in load_rules().cue.get((flip, direction), ()):
        m = pattern.fullmatch(cue.lower())
        if m:
            return m.expand(repl)
    return None


def _direction(rule: str) -> str | None:
    parts = rule.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("preceding", "following") else None


def _list_items(s: Sentence, m: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Mentions after ``m``'s cue sharing it and its status, in text order (``m`` included)."""
    if m.get("cue_start") is None or m["start"] < m["cue_end"]:
        return [m]
    return sorted(
        (
            o
            for o in s.mentions
            if o.get("cue_start") == m["cue_start"]
            and o["status"] == m["status"]
            and o["start"] >= m["cue_end"]
        ),
        key=lambda o: o["start"],
    )


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + ", or " + items[-1]


def _flip_list(s: Sentence, m: Mapping[str, Any], to: str, items: list[Mapping[str, Any]]) -> str | None:
    """The target leaves a list governed by one preceding cue; the rest stay under the cue."""
    text = s.text
    cue_end = m["cue_end"]
    if not re.fullmatch(r"\s*(?:[\w.-]+\s+){0,3}", text[cue_end : items[0]["start"]]):
        return None
    # each item's phrase: the premodifier words before it, and the mention
    starts = [items[0]["start"] - len(text[cue_end : items[0]["start"]].lstrip())]
    for prev, item in zip(items, items[1:], strict=False):
        sep = _SEPARATOR.match(text[prev["end"] : item["start"]])
        if sep is None:
            return None
        starts.append(item["start"] - len(sep.group("pre")))
    phrases = [text[a : o["end"]] for a, o in zip(starts, items, strict=True)]
    rest = [p for p, o in zip(phrases, items, strict=True) if o is not m]
    target = next(p for p, o in zip(phrases, items, strict=True) if o is m)
    if to == "absent":
        target = s.phrase(m, denied=True)[1]
    end = items[-1]["end"]
    cue = " ".join(text[m["cue_start"] : cue_end].split())
    lead_cut = m["cue_start"]
    there = _THERE_IS.search(text[:lead_cut])
    if to == "present":
        if cue.lower().startswith(("clear", "free")):
            return None  # "the lungs are clear of X, Y" has no present form that keeps the sentence
        if cue.lower().startswith(("without", "with no")):
            lead = "with "
        else:
            lead = "there are " if _plural(target) else "there is "
        if there:
            lead_cut = there.start()
            cue = (
                cue[len(there.group(0).strip()) :].strip() or cue if cue.lower().startswith("there") else cue
            )
    else:
        lead = "no "
    if cue.lower().startswith(("there is", "there are")):
        cue = "no"
    body = f"{lead}{_lower_first(target)}, but {_lower_first(cue)} {_join(rest)}"
    return tidy(text[:lead_cut] + body + text[end:])


def _flip_cue(s: Sentence, m: Mapping[str, Any], to: str) -> str | None:
    direction = _direction(m["rule"])
    if direction is None or m.get("cue_start") is None:
        return None
    text = s.text
    flip = f"{m['status']}_to_{to}"
    a, b = m["cue_start"], m["cue_end"]
    modal = _MODAL_BEFORE.search(text[:a])
    be = _BE_AFTER.match(text[b:])
    # the widest span a rule knows: "could suggest" before "suggest", "may be" before "may"
    spans = [
        (a2, b2)
        for a2 in ((modal.start(), a) if modal else (a,))
        for b2 in ((b + be.end(), b) if be else (b,))
    ]
    found = next(
        (
            (a2, b2, r)
            for a2, b2 in spans
            if (r := _cue_rule(flip, direction, " ".join(text[a2:b2].split()))) is not None
        ),
        None,
    )
    if found is None:
        return None
    a, b, repl = found
    there_is = "There are " if _plural(s.phrase(m, denied=False)[1]) else "There is "
    if to == "present" and direction == "preceding":
        if repl == "" and not text[:a].strip():
            # "No pneumothorax." -> "There is pneumothorax."
            return tidy(there_is + _lower_first(text[b:].lstrip()))
        if m["status"] == "absent" and any(
            o is not m and o["end"] <= a and o["status"] == "absent" for o in s.mentions
        ):
            # "No consolidation, no effusion." -> "No consolidation, but there is effusion.": a bare
            # deletion would leave the effusion under the first "no"
            head = re.sub(r"(?i)\s*(?:[,;]\s*)?(?:\band\s+)?$", "", text[:a])
            ends_clause = _CLAUSE_END.match(text[m["end"] :])
            lead = repl + " " if repl else (_lower_first(there_is) if ends_clause else "")
            return tidy(f"{head}, but {lead}{text[b:].lstrip()}")
    return tidy(_sub(text, a, b, repl))


def _flip_qualifier(s: Sentence, m: Mapping[str, Any], to: str) -> str | None:
    rule = m["rule"]
    if m.get("cue_start") is None:
        return None
    a, b = m["cue_start"], m["cue_end"]
    if rule.startswith("normal.") and to == "present":
        # "clear of airspace disease" is a denial of what follows; "not clear" is no normal phrasing
        if re.match(r"(?i)\s+of\b", s.text[b:]) or re.search(r"(?i)\bnot\s+$", s.text[:a]):
            return None
        anchor = rule[len("normal.") :].rsplit("_", 1)[0]
        word = load_rules().qualifier.get(anchor)
        return tidy(_sub(s.text, a, b, word)) if word else None
    # "the heart is enlarged" -> "the heart is not enlarged"; not "mildly to not moderately enlarged"
    # nor "the heart is not enlarged with unfolding of the aorta", where "not" reaches the aorta
    later = any(o is not m and o["start"] >= b for o in s.mentions)
    if (
        rule.startswith("qual.")
        and to == "absent"
        and a > m["end"]
        and _COPULA.search(s.text[:a])
        and not later
    ):
        return tidy(_sub(s.text, a, a, "not "))
    return None


def _deny(s: Sentence, m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Present (no cue) to absent: the families that apply, in order of preference."""
    text = s.text
    start, phrase = s.phrase(m, denied=True)
    out = []
    others_after = [
        o for o in s.mentions if o["start"] >= m["end"] and o["status"] != "absent" and o is not m
    ]
    # the unattached words before the phrase stay ("patchy opacity" -> "no patchy opacity")
    bare = (
        start + len(m0.group(0)) if (m0 := re.match(r"(?i)(?:a|an|the|some|any)\s+", text[start:])) else start
    )
    ext = _premodifiers(s, bare, m)
    phrase = text[ext:bare] + phrase
    art = _ARTICLE.search(text, 0, ext)
    lead = text[: art.start() if art else ext]
    there = _THERE_IS.search(lead)
    if there and not others_after and there.end() == len(lead):
        out.append(("there_is_no", tidy(f"{lead}no {_lower_first(phrase)}{text[m['end'] :]}")))
    if not lead.strip() and not others_after:
        out.append(("no_prefix", tidy(f"No {_lower_first(phrase)}{text[m['end'] :]}")))
    if others_after or not out:
        moved = _move_out(s, m, phrase, art.start() if art else ext)
        if moved:
            out.append(("move_out", moved))
    return out


def _premodifiers(s: Sentence, start: int, m: Mapping[str, Any]) -> int:
    """Where up to four plain words before ``start`` begin (none a stop word or another mention)."""
    text = s.text
    taken = [(o["start"], o["end"]) for o in s.mentions if o is not m]
    for _ in range(4):
        w = _WORD_BEFORE.search(text, 0, start)
        if w is None or w.group(1).lower() in _STOP or any(a < w.end(1) and w.start(1) < b for a, b in taken):
            break
        start = w.start(1)
    return start


def _move_out(s: Sentence, m: Mapping[str, Any], denied_phrase: str, start: int) -> str | None:
    """Take the finding's phrase (from ``start``, and one joining word) out; add ", but no <phrase>"."""
    text = s.text
    end = m["end"]
    after = re.match(r"(?i)\s*(?:,\s*(?:and\s+)?|and\s+|with\s+)", text[end:])
    before = re.search(r"(?i)(?:,\s*|\s+and\s+|\s+with\s+)$", text[:start])
    # the phrase must be a whole item: not "degenerative" out of "degenerative changes"
    if after and not text[:start].strip():
        cut = text[:start] + text[end + after.end() :]
    elif before and (after or _CLAUSE_END.match(text[end:])):
        cut = text[: before.start()] + text[end:]
    else:
        return None
    body = cut.rstrip()
    stop = body[-1] if body and body[-1] in ".;!?" else ""
    body = body[: len(body) - len(stop)].rstrip()
    if not body or not any(o is not m and o["start"] >= 0 for o in s.mentions):
        return None
    return tidy(f"{body}, but no {_lower_first(denied_phrase)}{stop or '.'}")


def _inside_denial(s: Sentence, m: Mapping[str, Any]) -> bool:
    """Whether a preceding cue of ``m`` sits in the clause of an earlier denied finding."""
    if m.get("cue_start") is None or _direction(m["rule"]) != "preceding":
        return False
    return any(
        o is not m
        and o["status"] == "absent"
        and o["end"] <= m["cue_start"]
        and not _TERMINATOR.search(s.text[o["end"] : m["cue_start"]])
        for o in s.mentions
    )


def flips(text: str, mentions: Sequence[Mapping[str, Any]], base: int = 0) -> list[Flip]:
    """Every flip of every finding of one sentence (``mentions``: its mention rows, offsets at ``base``).

    A finding mentioned twice, or with two statuses, in the sentence gets no flip (the gate could
    not tell which mention it flipped). A flip that changes nothing is dropped.
    """
    s = Sentence(text, mentions, base)
    by_finding: dict[str, list[Mapping[str, Any]]] = {}
    for m in s.mentions:
        by_finding.setdefault(m["finding"], []).append(m)
    out: list[Flip] = []
    for finding, ms in sorted(by_finding.items()):
        if len(ms) != 1:
            continue
        m = ms[0]
        # a statement ("normal chest radiograph") has no negated form the engine reads; an anchor
        # with two readings ("the cardiomediastinal silhouette is normal") flips both at once
        shared = any(o is not m and (o["start"], o["end"]) == (m["start"], m["end"]) for o in s.mentions)
        # "atelectasis versus pneumonia cannot be excluded": the differential keeps it uncertain;
        # "no consolidation concerning for pneumonia": without its hedge, the pneumonia falls
        # under the earlier denial, and no rewrite says "pneumonia present" plainly
        differential = m["status"] == "uncertain" and (
            _ALTERNATIVE.search(text) is not None or _inside_denial(s, m)
        )
        if m["rule"].startswith("statement.") or shared or differential:
            for to in FLIPS[m["status"]]:
                out.append(Flip(finding, m["status"], to, "none", ""))
            continue
        # "aspiration or edema are possible": one cue decides both; flipping it flips both
        shared_cue = m.get("cue_start") is not None and any(
            o is not m and o.get("cue_start") == m["cue_start"] for o in s.mentions
        )
        for to in FLIPS[m["status"]]:
            candidates: list[tuple[str, str | None]] = []
            if m["rule"].startswith(("normal.", "qual.")):
                # "heart size and mediastinal contour are normal": one qualifier, two findings
                candidates.append(("qualifier", None if shared_cue else _flip_qualifier(s, m, to)))
            elif m["status"] == "present" and m.get("cue") is None:
                candidates.extend(_deny(s, m))
            elif shared_cue:
                # a list under one preceding cue ("no X, Y or Z"); an uncertain list is a
                # differential ("may represent atelectasis or pneumonia") and is left alone
                items = _list_items(s, m)
                if len(items) > 1 and _direction(m["rule"]) == "preceding" and m["status"] != "uncertain":
                    candidates.append(("list", _flip_list(s, m, to, items)))
            else:
                candidates.append(("cue", _flip_cue(s, m, to)))
            seen = set()
            for method, new in candidates:
                if new and new != tidy(text) and new not in seen:
                    seen.add(new)
                    out.append(Flip(finding, m["status"], to, method, new))
            if not seen:
                out.append(Flip(finding, m["status"], to, "none", ""))
    return out


class MentionRow(NamedTuple):
    """What a flip or a report variant reads of one ``mentions`` row (offsets in the report);
    ``modifiers``: (kind, value, start, end) of each word."""

    start: int
    end: int
    text: str
    finding: str
    status: str
    rule: str
    cue: str | None
    cue_start: int | None
    cue_end: int | None
    modifiers: tuple[tuple[str, str, int, int], ...]


def _rel(v: int | None, base: int) -> int | None:
    return None if v is None else v - base


# A sentence and the layout of its mentions, offsets relative to the sentence: all a flip reads.
FlipKey = tuple[str, tuple[tuple[Any, ...], ...]]


def flip_key(text: str, mentions: Sequence[MentionRow], base: int = 0) -> FlipKey:
    """``text`` and its mentions' layout: what :func:`flips_of_key` reads, and a key to remember
    its flips by (a dump repeats its sentences: "No pneumothorax." is in most reports)."""
    return (
        text,
        tuple(
            (
                m.finding,
                m.status,
                m.rule,
                m.start - base,
                m.end - base,
                m.cue,
                _rel(m.cue_start, base),
                _rel(m.cue_end, base),
                tuple((k, a - base, b - base) for k, _, a, b in m.modifiers),
            )
            for m in mentions
        ),
    )


def flips_of_key(key: FlipKey) -> list[Flip]:
    """:func:`flips` of a sentence given as its :func:`flip_key`."""
    text, ms = key
    mentions = [
        {
            "finding": f,
            "status": st,
            "rule": r,
            "start": a,
            "end": b,
            "cue": cue,
            "cue_start": ca,
            "cue_end": cb,
            "modifiers": [{"kind": k, "start": wa, "end": wb} for k, wa, wb in words],
        }
        for f, st, r, a, b, cue, ca, cb, words in ms
    ]
    return flips(text, mentions)
