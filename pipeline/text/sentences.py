"""A fast rule-based sentence splitter for radiology report sections.

Works on a span of the report text and returns span offsets, so every sentence is exactly
``text[start:end]`` (surrounding whitespace left out by moving offsets). A sentence ends at:

* ``.``, ``!`` or ``?`` (a run of them, then closing brackets or quotes) followed by whitespace
  or the end of the span, unless the word before a single ``.`` is a known abbreviation
  (``Dr.``, ``approx.``, ``e.g.``, ``vs.``); an ambiguous one (``a.m.``, ``p.m.``, ``etc.``) ends
  the sentence only when a capitalised word or a list number follows. ``5.2 cm`` never splits (no
  space after the point); ``p.m..`` does (abbreviation, then a full stop).
* a ``.`` glued to a capitalised word (``effusion.There``) or to a list number
  (``effusion.2.No pneumothorax``), frequent typos;
* a blank line;
* a line break before a list item (``2.``, ``(2)``, ``-``, ``*``), or after a *short* line (under
  ``short_line`` characters) when the next line starts with a capital: lines wrapped near column
  79 are long, so a short line with text after it was broken on purpose (an unpunctuated list);
* a list number inside a line that continues the list (``1. Cardiomegaly 2. No effusion``,
  ``1) Cardiomegaly 2) No effusion``, ``1.Cardiomegaly 2.No effusion``).

A list number may be glued to its item (``2.No effusion``, ``3)no edema``): it is a marker all the
same.

Any other line break (wrapping) does not end a sentence. List markers are not part of a sentence.
Sentences with no letter or digit (``___``, ``----``) are dropped; one longer than
``max_chars`` is cut at a space, so one unpunctuated megabyte cannot reach the NLP as one doc.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.text.sections import strip_span

# Never end a sentence (compared lower-case, without the final period).
ABBREVIATIONS: tuple[str, ...] = (
    "dr", "drs", "mr", "mrs", "ms", "prof", "st", "sr", "jr", "vs", "approx", "appr", "apprx",
    "e.g", "eg", "i.e", "ie", "cf", "fig", "figs", "resp", "incl", "ca", "y.o", "lt", "rt", "mt",
    "ref",
)  # fmt: skip
# End a sentence only when a capitalised word or a list number follows.
AMBIGUOUS_ABBREVIATIONS: tuple[str, ...] = ("a.m", "p.m", "etc")

# Every event starts with one of a few characters, and the pattern opens with that class so the
# regex engine skips to candidates in C; lookbehinds then tell the events apart. Runs of
# terminators are tried from their first character only, possessively: linear time.
_EVENTS = re.compile(
    r"[\n.!?(0-9](?:"
    r"(?<=\n)(?P<para>[ \t]*\n)"
    r"|(?<=\n)(?P<nl>)"
    r"|(?<=[.!?])(?<![.!?][.!?])(?P<term>[.!?]*+)[)\]\"'\u2019\u201d]*+(?=\s|\Z)"
    r"|(?<=[A-Za-z_]{2}\.)(?P<glued>)(?=[A-Z][a-z]|\(?\d{1,2}[.)]\s*[A-Za-z])"
    r"|(?<=\s\()(?P<item>\d{1,2})\)(?=\s|[A-Za-z])"
    r"|(?<=\s\d)(?P<item2>\d?)\)(?=\s|[A-Za-z])"
    r"|(?<=\s\d)(?P<item3>\d?)\.(?=[A-Za-z])"
    r")"
)
# a list marker; a number may be glued to its item ("2.No effusion", "3)no edema")
_LEAD = re.compile(r"\s*+(?:\(?(?P<num>\d{1,2})[.)](?:\s+|(?=[A-Za-z]))|[-*\u2022\u25aa\u00b7]\s+)?")
_ITEM_AT = re.compile(r"[ \t]*(?:\(?\d{1,2}[.)]|[-*\u2022\u25aa\u00b7])\s")
_CAPITAL_AT = re.compile(r"[ \t]*[A-Z]")
_SENTENCE_PUNCT = re.compile(r"[.!?]")
_LETTER_AT = re.compile(r"\s*[^\W\d_]")
_NEXT_STARTS = re.compile(r"\s*(?:[A-Z][a-z]|\(?\d{1,2}[.)]\s|\Z)")
_ALNUM = re.compile(r"[^\W_]")
_CONTINUES = re.compile(
    r"(?:[,;:/(&-]|\b(?:and|or|of|the|with|to|a|an|in|at|for|by|from|no|not|versus|vs\.?))\s*\Z",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SentenceRules:
    """Settings of :func:`split_sentences` (see ParseConfig for their meaning)."""

    abbreviations: frozenset[str]
    ambiguous: frozenset[str]
    short_line: int
    max_chars: int

    @functools.cached_property
    def window(self) -> int:
        """How far back a word is read before a period: a longer word is no abbreviation."""
        return 2 + max(map(len, self.abbreviations | self.ambiguous), default=0)


def _skip(text: str, pos: int, end: int, num: int | None) -> tuple[int, int | None]:
    """Move past whitespace and a list marker; returns the new position and the list number."""
    m = _LEAD.match(text, pos, end)
    if m is None:  # pragma: no cover - the pattern can match the empty string
        return pos, num
    if m.group("num") is not None:
        num = int(m.group("num"))
    return m.end(), num


def _word_before(text: str, dot: int, floor: int, window: int) -> tuple[int, str]:
    """The word ending at ``dot`` (start, text), or ``(-1, "")`` when longer than ``window``."""
    lo = max(floor, dot - window)
    seg = text[lo:dot]
    cut = max(seg.rfind(" "), seg.rfind("\n"), seg.rfind("\t"))
    if cut >= 0:
        return lo + cut + 1, seg[cut + 1 :]
    if lo == floor:
        return lo, seg
    return -1, ""


def _line_breaks(text: str, nl: int, end: int, rules: SentenceRules, unpunctuated: bool = False) -> bool:
    """Whether the single line break at ``nl`` ends a sentence (list item or short line).

    In a span with no sentence punctuation at all, a short line ends a sentence whatever the case
    of the next line: such text is a dictated list ("heart size normal / no effusion"), and
    joining its lines would let one line's negation reach the next.
    """
    if _ITEM_AT.match(text, nl + 1, end):
        return True
    starts = _LETTER_AT.match(text, nl + 1, end) if unpunctuated else _CAPITAL_AT.match(text, nl + 1, end)
    if not rules.short_line or not starts:
        return False
    lo = max(0, nl - rules.short_line - 1)
    prev = text.rfind("\n", lo, nl)
    if prev == -1 and lo > 0:
        return False  # the line is longer than the window
    line = text[prev + 1 : nl].rstrip()
    return len(line) < rules.short_line and _CONTINUES.search(line) is None


def _emit(out: list[tuple[int, int]], text: str, a: int, b: int, max_chars: int) -> None:
    a, b = strip_span(text, a, b)
    while max_chars and b - a > max_chars:
        hi = a + max_chars
        cut = max(text.rfind(" ", a + max_chars // 2, hi), text.rfind("\n", a + max_chars // 2, hi))
        if cut <= a:
            cut = hi
        s, e = strip_span(text, a, cut)
        if e > s and _ALNUM.search(text, s, e):
            out.append((s, e))
        a, b = strip_span(text, cut, b)
    if b > a and _ALNUM.search(text, a, b):
        out.append((a, b))


def split_sentences(text: str, start: int, end: int, rules: SentenceRules) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:end]``: in order, non-overlapping, stripped, inside the span."""
    return list(iter_sentences(text, start, end, rules))


def iter_sentences(text: str, start: int, end: int, rules: SentenceRules) -> Iterator[tuple[int, int]]:
    """The spans of :func:`split_sentences`, one at a time: a megabyte section never becomes a list."""
    out: list[tuple[int, int]] = []  # the spans of one event (a cut sentence gives several)
    window = rules.window
    unpunctuated = _SENTENCE_PUNCT.search(text, start, end) is None
    cur, num = _skip(text, start, end, None)
    for m in _EVENTS.finditer(text, start, end):
        p = m.start()
        if p < cur:
            continue
        kind = m.lastgroup
        if kind == "term" or kind == "glued":
            if kind == "glued" or (m.end("term") == p + 1 and text[p] == "."):
                w_start, word = _word_before(text, p, cur, window)
                low = word.lstrip("([\"'").lower()
                if low in rules.abbreviations:
                    continue
                if kind == "term" and low in rules.ambiguous and not _NEXT_STARTS.match(text, m.end(), end):
                    continue
                if (
                    kind == "term"
                    and num is not None
                    and w_start > cur
                    and low.isdigit()
                    and len(low) <= 2
                    and int(low) == num + 1
                    and _LETTER_AT.match(text, m.end(), end)
                ):
                    # "1. Cardiomegaly 2. No effusion": the number opens the next item
                    _emit(out, text, cur, w_start, rules.max_chars)
                    cur, num = _skip(text, w_start, end, num)
                    continue
            stop = m.end() if kind == "term" else p + 1
            _emit(out, text, cur, stop, rules.max_chars)
            cur, num = _skip(text, stop, end, num)
        elif kind in ("item", "item2", "item3"):
            # "1) Cardiomegaly 2) No effusion", "1.Cardiomegaly 2.No effusion": the next number
            # of a list opens the next item
            if num is not None and int(text[p : m.end() - 1].lstrip("(")) == num + 1:
                _emit(out, text, cur, p, rules.max_chars)
                cur, num = _skip(text, p, end, num)
        elif kind == "para":
            _emit(out, text, cur, p, rules.max_chars)
            cur, num = _skip(text, m.end(), end, num)
        elif _line_breaks(text, p, end, rules, unpunctuated):
            _emit(out, text, cur, p, rules.max_chars)
            cur, num = _skip(text, p + 1, end, num)
        if out:
            yield from out
            out.clear()
    if cur < end:
        _emit(out, text, cur, end, rules.max_chars)
    yield from out
