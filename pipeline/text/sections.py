"""Report sections: header rules (``section_headers.yaml``), section spans and the labeled section.

A section is a span of ``reports.text``: the body after a header up to the next header, a
separator line (a run of ``_``, ``-``, ``=`` or ``*``) or a banner line (``FINAL REPORT``), with
surrounding whitespace left out by moving the offsets. Text under no header is section ``other``.

Headers, in order of trust:

* **Known spans** (``reports.sections``) are taken as given (names canonicalised); only the gaps
  between them are searched for headers, so ``"FINDINGS: "`` written before a known findings span
  opens nothing.
* **Line headers**: at a line start after optional blanks, a run of letters, spaces and ``()/,&'-``
  ending in a colon. A spelling listed in ``section_headers.yaml`` opens its section in any case;
  an unlisted *upper-case* run opens a section by MIT-LCP's fallbacks (``unknown_headers``) unless
  it is a listed sub-header (``LUNGS:``) or the whole report is upper case (no case contrast to
  tell a header from a shouted sentence). A listed upper-case spelling alone on a line
  (``IMPRESSION``) is a header too.
* **Inline headers** (NIH style): a spelling listed under ``inline`` followed by a colon in the
  middle of a line, after a sentence end (``... stable. impression: no change``), or in upper
  case in a mixed-case report (``... no effusion IMPRESSION: ...``).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import yaml

from pipeline.core.errors import PipelineError

HEADERS_FILE = "section_headers.yaml"
OTHER = "other"
LAST_PARAGRAPH = "last_paragraph"

_NAME_OK = re.compile(r"[a-z][a-z0-9_]*")
_PAREN = re.compile(r"\([^()]*\)")
_SPACES = re.compile(r"\s+")
_SLUG = re.compile(r"[^a-z0-9]+")
# A line-start header name: letters, spaces and a little punctuation, at most 100 characters
# (possessive, so a long line without a colon fails in one step).
_LINE_NAME = re.compile(r"[ \t]*([A-Za-z][A-Za-z ()/,&'\-]{0,99}+)")
# Lines that hold only a separator or a few words (banners, a header without a colon). Matched
# from the newline before them (a literal prefix the regex engine finds fast); the first line of
# a region is matched on its own.
_LINE_BODY = (
    r"[ \t]*(?:(?P<sep>_{5,}+|-{5,}+|={5,}+|\*{5,}+)|(?P<solo>[A-Za-z][A-Za-z ]{1,40}+))[ \t]*(?=\n|\Z)"
)
_LINES = re.compile(r"\n" + _LINE_BODY)
_FIRST_LINE = re.compile(_LINE_BODY)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_NON_SPACE = re.compile(r"\S")
_TAIL = 256  # characters of a span's end read at a time to strip it
_WINDOW = 120  # how far before a colon a line start or an inline header is looked for


class Section(NamedTuple):
    """One section: canonical ``name``, ``header`` as written (None when not read from the text),
    body offsets ``[start, end)`` (stripped), ``known`` when it came from ``reports.sections``."""

    name: str
    header: str | None
    start: int
    end: int
    known: bool = False


@dataclass(frozen=True)
class HeaderRules:
    """The validated content of ``section_headers.yaml`` (plus any extra spellings from config)."""

    spellings: dict[str, str]  # normalised spelling -> canonical name
    banners: frozenset[str]
    subheaders: frozenset[str]
    inline: tuple[str, ...]
    contains: tuple[str, ...]
    findings_if: tuple[str, ...]

    @functools.cached_property
    def inline_tail(self) -> re.Pattern[str]:
        """An inline header (listed spelling then blanks) ending a window of text, after a sentence
        end (group ``punct``) or a blank."""
        words = "|".join(
            re.escape(w).replace(r"\ ", r"\s+") for w in sorted(self.inline, key=len, reverse=True)
        )
        return re.compile(rf"(?:(?P<punct>[.;!?])\s+|\s)(?P<name>{words})[ \t]*$", re.IGNORECASE)

    @functools.cached_property
    def findings_re(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(w) for w in self.findings_if))

    def with_extra(self, extra: Iterable[tuple[str, str]]) -> HeaderRules:
        """A copy with extra ``(spelling, canonical)`` pairs (these win over the file)."""
        spellings = dict(self.spellings)
        for spelling, name in extra:
            spellings[normalise(spelling)] = name
        return HeaderRules(
            spellings, self.banners, self.subheaders, self.inline, self.contains, self.findings_if
        )


def normalise(header: str) -> str:
    """The lookup form of a header: parentheticals dropped, lower case, single spaces."""
    if "(" in header:
        header = _PAREN.sub(" ", header)
    return _SPACES.sub(" ", header).strip().lower()


def _fail(where: str, problem: str) -> PipelineError:
    return PipelineError(
        "E_HEADERS_INVALID",
        f"pipeline/text/{HEADERS_FILE}: {where}: {problem}. Fix the file (its header comment gives the format).",
    )


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, "expected a list of non-empty strings")
    for v in value:
        if normalise(v) != v:
            raise _fail(where, f"{v!r} is not in lookup form; write {normalise(v)!r}")
    return value


def validate_headers(raw: Any) -> HeaderRules:
    """Check the parsed YAML of a header file and build :class:`HeaderRules`.

    Raises PipelineError(E_HEADERS_INVALID) naming the entry at fault.
    """
    if not isinstance(raw, dict):
        raise _fail("top level", "expected a mapping")
    if raw.get("version") != 1:
        raise _fail("version", f"unsupported version {raw.get('version')!r} (expected 1)")
    unknown_keys = set(raw) - {"version", "sections", "banners", "subheaders", "inline", "unknown"}
    if unknown_keys:
        raise _fail("top level", f"unknown keys {sorted(unknown_keys)}")
    sections = raw.get("sections")
    if not isinstance(sections, dict) or not sections:
        raise _fail("sections", "expected a mapping of canonical name to spellings")
    spellings: dict[str, str] = {}
    for name, values in sections.items():
        if not isinstance(name, str) or not _NAME_OK.fullmatch(name) or name in (OTHER, LAST_PARAGRAPH):
            raise _fail(
                f"sections.{name}", "a canonical name is snake_case and not 'other' or 'last_paragraph'"
            )
        for spelling in _strings(values, f"sections.{name}"):
            if spelling in spellings and spellings[spelling] != name:
                raise _fail(f"sections.{name}", f"{spelling!r} is listed under {spellings[spelling]!r} too")
            spellings[spelling] = name
    banners = frozenset(_strings(raw.get("banners", []), "banners"))
    subheaders = frozenset(_strings(raw.get("subheaders", []), "subheaders"))
    if clash := sorted((banners | subheaders) & set(spellings)):
        raise _fail("banners/subheaders", f"{clash} are section spellings too")
    inline = tuple(_strings(raw.get("inline", []), "inline"))
    if missing := [w for w in inline if w not in spellings]:
        raise _fail("inline", f"{missing} are not section spellings")
    unknown = raw.get("unknown", {})
    if not isinstance(unknown, dict) or set(unknown) - {"contains", "findings_if"}:
        raise _fail("unknown", "expected a mapping with 'contains' and 'findings_if'")
    contains = tuple(_strings(unknown.get("contains", []), "unknown.contains"))
    if bad := [c for c in contains if c not in set(spellings.values())]:
        raise _fail("unknown.contains", f"{bad} are not canonical section names")
    findings_if = tuple(_strings(unknown.get("findings_if", []), "unknown.findings_if"))
    return HeaderRules(spellings, banners, subheaders, inline, contains, findings_if)


@functools.cache
def load_headers() -> HeaderRules:
    """The bundled header rules (read and validated once per process)."""
    text = (resources.files("pipeline.text") / HEADERS_FILE).read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail("syntax", str(exc)) from exc
    return validate_headers(raw)


# -- finding headers ------------------------------------------------------------------------------


class _Event(NamedTuple):
    start: int  # where the header / separator begins (ends the section before it)
    body: int  # where the next section's body begins
    name: str | None  # canonical name; None for a separator or banner (text after it is `other`)
    header: str | None


def classify(header: str, rules: HeaderRules, *, unknown: str, upper_ok: bool) -> str | None:
    """The canonical section a line header opens, or None when it is body text.

    ``unknown`` is ``"mit_lcp"`` (unlisted upper-case headers open a section by MIT-LCP's
    fallbacks) or ``"ignore"``; ``upper_ok`` is False for all-upper-case reports.
    """
    key = normalise(header)
    name = rules.spellings.get(key)
    if name is not None:
        return name
    if unknown != "mit_lcp" or not upper_ok or key in rules.subheaders or not key:
        return None
    bare = _PAREN.sub("", header)
    if not bare.isupper():
        return None
    for main in rules.contains:
        if main in key:
            return main
    if rules.findings_if and rules.findings_re.search(key):
        return "findings"
    return _SLUG.sub("_", key).strip("_")[:40] or None


def find_events(
    text: str, lo: int, hi: int, rules: HeaderRules, *, unknown: str, inline: bool, upper_ok: bool
) -> list[_Event]:
    """Headers, separators and banners in ``text[lo:hi]``, in order.

    Header texts are interned: reports run together repeat a few headers hundreds of thousands
    of times, and each section keeps its header.
    """
    events: list[_Event] = []
    # Colon-driven: every header ends in a colon, and colons are few.
    p = text.find(":", lo, hi)
    while p != -1:
        w0 = max(lo, p - _WINDOW)
        nl = text.rfind("\n", w0, p)
        line_start = nl + 1 if nl != -1 else (w0 if w0 == 0 or text[w0 - 1] == "\n" else -1)
        found = False
        if line_start != -1 and line_start >= lo:
            m = _LINE_NAME.fullmatch(text, line_start, p)
            if m is not None:
                name = classify(m.group(1), rules, unknown=unknown, upper_ok=upper_ok)
                if name is not None:
                    events.append(_Event(m.start(1), p + 1, name, sys.intern(m.group(1).strip())))
                    found = True
        if not found and inline and rules.inline:
            m = rules.inline_tail.search(text, max(lo, p - 40), p)
            # Mid-line, a lower-case "findings:" after a word is prose ("with these findings:");
            # after a sentence end, or in upper case in a mixed-case report, it is a header.
            if m is not None and (m.group("punct") or (upper_ok and m.group("name").isupper())):
                header = sys.intern(m.group("name"))
                events.append(_Event(m.start("name"), p + 1, rules.spellings[normalise(header)], header))
        p = text.find(":", p + 1, hi)
    # Line-driven: separators, banners, and a listed upper-case header alone on its line.
    line_events = []
    first = _FIRST_LINE.match(text, lo, hi) if lo == 0 or text[lo - 1] == "\n" else None
    for m in ([first] if first else []) + list(_LINES.finditer(text, lo, hi)):
        if m.group("sep") is not None:
            line_events.append(_Event(m.start("sep"), m.end(), None, None))
            continue
        solo = m.group("solo")
        key = normalise(solo)
        if key in rules.banners:
            line_events.append(_Event(m.start("solo"), m.end(), None, None))
        elif solo.isupper() and key in rules.spellings:
            line_events.append(
                _Event(m.start("solo"), m.end(), rules.spellings[key], sys.intern(solo.strip()))
            )
    if line_events:
        events = sorted(events + line_events, key=lambda e: e.start)
    return events


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` narrowed past surrounding whitespace (``end == start`` when blank).

    Whitespace as ``str.strip`` sees it (``\\S`` is its complement), found without copying the
    span: a section may be megabytes long, and the sentence splitter calls this on every piece.
    """
    m = _NON_SPACE.search(text, start, end)
    if m is None:
        return start, start
    left = m.start()
    while end > left:  # back over trailing whitespace, a bounded slice at a time
        lo = max(left, end - _TAIL)
        tail = text[lo:end].rstrip()
        if tail:
            return left, lo + len(tail)
        end = lo
    return left, end  # pragma: no cover - text[left] is not whitespace


def split_free_text(
    text: str, lo: int, hi: int, rules: HeaderRules, *, unknown: str, inline: bool, upper_ok: bool
) -> list[Section]:
    """Sections of ``text[lo:hi]`` found from headers; empty bodies are left out."""
    out: list[Section] = []
    name, header, start = OTHER, None, lo

    def close(end: int) -> None:
        s, e = strip_span(text, start, end)
        if e > s:
            out.append(Section(name, header, s, e))

    for ev in find_events(text, lo, hi, rules, unknown=unknown, inline=inline, upper_ok=upper_ok):
        if ev.start < start:  # overlaps the header just taken (a solo line inside it): skip
            continue
        close(ev.start)
        name, header, start = (ev.name, ev.header, ev.body) if ev.name else (OTHER, None, ev.body)
    close(hi)
    return out


def canonical_known(name: str | None, rules: HeaderRules) -> str:
    """A known span's name as a canonical section name (listed spellings mapped, others slugged)."""
    key = normalise((name or "").replace("_", " "))
    if key in rules.spellings:
        return rules.spellings[key]
    return _SLUG.sub("_", key).strip("_") or OTHER


def valid_known(spans: Sequence[dict[str, Any]] | None, n: int) -> list[tuple[str | None, int, int]]:
    """Known spans sorted by start, keeping those inside ``[0, n]`` that overlap no earlier one."""
    if not spans:
        return []
    out: list[tuple[str | None, int, int]] = []
    cleaned = []
    for span in spans:
        if not span:
            continue
        start, end = span.get("start"), span.get("end")
        if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= n:
            cleaned.append((start, end, span.get("name")))
    last_end = 0
    for start, end, name in sorted(cleaned, key=lambda s: (s[0], s[1])):
        if start >= last_end:
            out.append((name, start, end))
            last_end = end
    return out


def split_sections(
    text: str,
    known: Sequence[tuple[str | None, int, int]],
    rules: HeaderRules,
    *,
    unknown: str,
    inline: bool,
) -> list[Section]:
    """All sections of one report, in text order: known spans, and headers found around them."""
    upper_ok = _has_lower(text)
    kw = {"unknown": unknown, "inline": inline, "upper_ok": upper_ok}
    if not known:
        return split_free_text(text, 0, len(text), rules, **kw)
    out: list[Section] = []
    pos = 0
    for name, start, end in known:
        if start > pos:
            out.extend(split_free_text(text, pos, start, rules, **kw))
        s, e = strip_span(text, start, end)
        if e > s:
            out.append(Section(canonical_known(name, rules), None, s, e, True))
        pos = max(pos, end)
    if pos < len(text):
        out.extend(split_free_text(text, pos, len(text), rules, **kw))
    return out


_LOWER = re.compile(r"[a-z]")


def _has_lower(text: str) -> bool:
    """Whether ``text`` has a lower-case letter (ASCII first: the common case, and fast)."""
    return _LOWER.search(text) is not None or any(c.islower() for c in text)


# -- the labeled section --------------------------------------------------------------------------


def mark_labeled(
    text: str, sections: list[Section], *, policy: str, last_paragraph: bool
) -> tuple[list[Section], list[bool]]:
    """The sections a CheXpert-style labeler reads, following MIT-LCP's choice.

    ``policy="mit_lcp"``: the last impression; else the last findings; else the last paragraph
    (see below); else the last comparison; else nothing. ``policy="findings_and_impression"``:
    the last impression *and* the last findings when the report has either; else the same fallbacks.

    Last paragraph (reports with neither findings nor impression), as MIT-LCP: when
    ``last_paragraph`` is on and the last section was found in the text (not a known span) and
    holds a blank line, its text after the first blank line is split off as a new section
    ``last_paragraph`` and read. In MIMIC-CXR that is the narrative after ``COMPARISON: None.`` or
    after a title line such as ``PORTABLE CHEST RADIOGRAPH``; in a headerless report of several
    paragraphs the first paragraph is left unread, as in the official labels (the parse stage turns
    this on for MIMIC-CXR reports only: ``ParseConfig.headerless``). Else, when the last
    section is ``other`` (no header governs it: a one-paragraph free-text report), all of it is
    read. Returns the (possibly extended) sections and one flag per section.
    """
    flags = [False] * len(sections)
    if not sections:
        return sections, flags
    last: dict[str, int] = {}
    for i, s in enumerate(sections):
        last[s.name] = i
    if "impression" in last or "findings" in last:
        if "impression" in last:
            flags[last["impression"]] = True
        if "findings" in last and (policy == "findings_and_impression" or "impression" not in last):
            flags[last["findings"]] = True
        return sections, flags
    tail = sections[-1]
    if last_paragraph and not tail.known:
        m = _BLANK_LINE.search(text, tail.start, tail.end)
        if m is not None:
            s1, e1 = strip_span(text, tail.start, m.start())
            s2, e2 = strip_span(text, m.end(), tail.end)
            if e1 > s1 and e2 > s2:
                head = tail._replace(start=s1, end=e1)
                sections = [*sections[:-1], head, Section(LAST_PARAGRAPH, None, s2, e2)]
                return sections, [*flags, True]
    if tail.name == OTHER:
        flags[-1] = True
        return sections, flags
    if "comparison" in last:
        flags[last["comparison"]] = True
    return sections, flags
