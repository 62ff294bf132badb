"""The spaCy text engine: blank English, scispacy's tokenizer, the lexicon matcher and two NegEx.

:func:`load_engine` builds it once per process (``functools.cache``): a Dask worker pays the
few seconds of set-up once. :meth:`TextEngine.analyse` turns sentence texts into mention tuples:

* a sentence with no lexicon word (cheap lower-cased word check) never reaches spaCy;
* results are memoised per distinct sentence text (radiology repeats itself: "No pneumothorax."),
  as offsets relative to the sentence, in a bounded LRU;
* the rest goes through the pipeline's components, one doc at a time, in this process.

``Doc`` objects never leave this module.
"""

from __future__ import annotations

import functools
import gc
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import spacy
from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.tokens import Doc
from spacy.util import filter_spans

from pipeline.core.collector import collector_paused
from pipeline.text import negation as _negation  # noqa: F401  (registers the clip2clinic_negex factory)
from pipeline.text.lexicon import SUPPORT_DEVICES, Anchor, Finding, Lexicon, load_lexicon
from pipeline.text.negation import ENTS_KEY, TOKENS_KEY, Cue, Ent, Tokens, cues_of, decide, tokens_of

NEG_EXT = "c2c_neg"
UNC_EXT = "c2c_unc"
AUX_KEY = "c2c_aux"
# How far (tokens) an anatomy/laterality word, a modifier, or an anchor's qualifier may sit from
# its mention. Small on purpose: a word further away usually belongs to another mention.
ANATOMY_WINDOW = 8
MODIFIER_WINDOW = 4
QUALIFIER_AFTER = 8
QUALIFIER_BEFORE = 2
# A qualifier this close before another structure or finding premodifies it ("enlarged ... aorta").
QUALIFIER_PREMODIFIES = 3


class MentionHit(NamedTuple):
    """One mention in a sentence; ``start``/``end`` are character offsets in the sentence text."""

    start: int
    end: int
    text: str
    finding: str
    observation: str | None
    status: str
    cue: str | None
    rule: str
    anatomy: str | None
    laterality: str | None
    severity: str | None
    size: str | None
    temporal: str | None
    # where the deciding cue (or normal-phrasing qualifier) is, in sentence characters
    cue_start: int | None = None
    cue_end: int | None = None
    # (kind, value, start, end) of each anatomy / laterality / modifier word given to the mention
    modifiers: tuple[tuple[str, str, int, int], ...] = ()


_PREFIX_CACHE = 200_000  # distinct tokens remembered; a real dump's vocabulary is far smaller


class _Matchers:
    """One PhraseMatcher for plain terms plus a prefix scan for ``prefix*`` terms, over keys in
    groups (the lexicon matcher's entities and its other words): matches come back per group,
    (key, start token, end token), in the order one matcher per group would give them.

    A prefix term ("atelecta*", "plate atelecta*") has its ``*`` on the last token (the lexicon
    checks that). It is matched by a ``str.startswith`` scan: spaCy's Matcher with REGEX
    predicates cost a third of the stage's time for the same result.

    Slash compounds share their head: in "infectious/inflammatory process" the term "infectious
    process" is matched over the whole compound (the tokenizer splits the slash).
    """

    def __init__(self, nlp: Language, groups: int) -> None:
        self.nlp = nlp
        # one matcher walks the tokens once; a second cost as much again
        self.phrase = PhraseMatcher(nlp.vocab, attr="LOWER")
        self.keys: dict[int, tuple[int, str]] = {}  # match id -> (group, key)
        self.by_prefix: list[dict[str, list[tuple[str, tuple[str, ...]]]]] = [{} for _ in range(groups)]
        self.prefixes: tuple[str, ...] = ()
        # lower-cased token -> per group, the (key, words before) of the prefix terms whose
        # prefix starts it, in the group's order (() for none): a report's words repeat, so the
        # scan over every prefix runs once per distinct token, not once per token
        self.by_token_prefix: dict[str, tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]] = {}
        # plain terms of two or more tokens, by lower-cased tokens: for slash compounds
        self.by_tokens: list[dict[tuple[str, ...], str]] = [{} for _ in range(groups)]

    def add(self, group: int, key: str, terms: Iterable[str]) -> None:
        phrases = []
        self.keys[self.nlp.vocab.strings.add(key)] = (group, key)
        for term in terms:
            if not term.endswith("*"):
                doc = self.nlp.make_doc(term)
                phrases.append(doc)
                if 1 < len(doc) <= 4:
                    self.by_tokens[group].setdefault(tuple(t.lower_ for t in doc), key)
                continue
            head, _, last = term.rpartition(" ")
            before = tuple(t.lower_ for t in self.nlp.make_doc(head)) if head else ()
            self.by_prefix[group].setdefault(last[:-1], []).append((key, before))
        self.prefixes = tuple(dict.fromkeys(p for by in self.by_prefix for p in by))
        self.by_token_prefix.clear()
        if phrases:
            self.phrase.add(key, phrases)

    def __call__(self, doc: Doc, toks: Tokens) -> list[list[tuple[str, int, int]]]:
        """Each group's matches; ``toks``: the doc's tokens, shared by callers."""
        out: list[list[tuple[str, int, int]]] = [[] for _ in self.by_prefix]
        keys = self.keys
        for m, s, e in self.phrase(doc):
            group, key = keys[m]
            out[group].append((key, s, e))
        if "/" in toks.text:
            for group, matches in enumerate(out):
                found = {(s, e) for _, s, e in matches}
                matches += self._slash_compounds(self.by_tokens[group], toks.lowers, found)
        if not self.prefixes:
            return out
        lowers = toks.lowers
        per_token = list(map(self.by_token_prefix.get, lowers))
        if None in per_token:
            per_token = [
                self._prefix_entries(low) if e is None else e
                for low, e in zip(lowers, per_token, strict=True)
            ]
        if not any(per_token):
            return out
        for group, matches in enumerate(out):
            for i, entries in enumerate(per_token):
                if not entries:
                    continue
                for key, before in entries[group]:
                    start = i - len(before)
                    if start >= 0 and all(lowers[start + k] == w for k, w in enumerate(before)):
                        matches.append((key, start, i + 1))
        return out

    def _prefix_entries(self, low: str) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]:
        cache = self.by_token_prefix
        if len(cache) >= _PREFIX_CACHE:
            cache.clear()
        entries: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...] = ()
        if low.startswith(self.prefixes):
            entries = tuple(
                tuple(e for prefix, es in by.items() if low.startswith(prefix) for e in es)
                for by in self.by_prefix
            )
        cache[low] = entries
        return entries

    @staticmethod
    def _slash_compounds(
        by_tokens: dict[tuple[str, ...], str], lowers: list[str], found: set[tuple[int, int]]
    ) -> list[tuple[str, int, int]]:
        """ "a/b c": the term "a c" over the whole compound, or over "a" alone when "b c" is a term
        too ("pleural/pericardial effusion": both effusions). ``lowers``: the tokens, lower-cased;
        ``found``: the spans the group's phrases matched."""
        out = []
        for i in range(1, len(lowers) - 2):
            if lowers[i] != "/":
                continue
            for k in range(1, 4):
                end = i + 2 + k
                if end > len(lowers):
                    break
                key = by_tokens.get((lowers[i - 1], *lowers[i + 2 : end]))
                if key is not None:
                    out.append((key, i - 1, i if (i + 1, end) in found else end))
        return out


@Language.factory("clip2clinic_lexicon", default_config={"lexicon_dir": None})
def make_lexicon_matcher(nlp, name, lexicon_dir):  # type: ignore[no-untyped-def]
    # No annotations: spaCy validates factory arguments from them, and this module's postponed
    # (string) annotations cannot be resolved there.
    return LexiconMatcher(nlp, load_lexicon(lexicon_dir))


_ENTS, _AUX = 0, 1


class LexiconMatcher:
    """Puts findings (label ``F|<id>``) and anchors (``A|<id>``), longest first, in
    ``doc.user_data["c2c_ents"]`` as :class:`~pipeline.text.negation.Ent` tuples (what
    ``doc.ents`` would hold, without its ``Span`` objects), and keeps anatomy
    (``N|<id>|<laterality>``), laterality (``L|<side>``), modifiers (``M|<kind>|<value>``) and
    qualifiers (``Q|<group>``) in ``doc.user_data["c2c_aux"]``."""

    def __init__(self, nlp: Language, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.matchers = _Matchers(nlp, groups=2)
        add = self.matchers.add
        for f in lexicon.findings.values():
            add(_ENTS, f"F|{f.id}", f.terms)
        for a in lexicon.anchors.values():
            add(_ENTS, f"A|{a.id}", a.terms)
        for anat in lexicon.anatomy:
            add(_AUX, f"N|{anat.id}|{anat.laterality or ''}", anat.terms)
        for side, terms in lexicon.laterality.items():
            add(_AUX, f"L|{side}", terms)
        for kind, groups in lexicon.modifiers.items():
            for value, terms in groups.items():
                add(_AUX, f"M|{kind}|{value}", terms)
        for group, terms in lexicon.qualifiers.items():
            add(_AUX, f"Q|{group}", terms)
        # the kind an aux key's overlaps are settled within: N, L, Q, or M|<kind>
        self._kind = {
            key: key[0] if key[0] != "M" else key[: key.index("|", 2)]
            for group, key in self.matchers.keys.values()
            if group == _AUX
        }

    def __call__(self, doc: Doc) -> Doc:
        ent_matches, aux_matches = self.matchers(doc, tokens_of(doc))
        # spaCy's own overlap rule for doc.ents; it reads only .start and .end, so tuples do
        ents = list(map(Ent._make, ent_matches))
        doc.user_data[ENTS_KEY] = filter_spans(ents) if len(ents) > 1 else ents
        if len(aux_matches) < 2:
            doc.user_data[AUX_KEY] = aux_matches
            return doc
        by_kind: dict[str, list[tuple[str, int, int]]] = {}
        kind = self._kind
        for match in aux_matches:
            by_kind.setdefault(kind[match[0]], []).append(match)
        aux: list[tuple[str, int, int]] = []
        for matches in by_kind.values():
            aux.extend(_longest(matches))
        doc.user_data[AUX_KEY] = aux
        return doc


def _longest(matches: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Non-overlapping matches, longest first (as spaCy's filter_spans, on tuples)."""
    if len(matches) < 2:
        return matches
    taken: set[int] = set()
    out = []
    for key, s, e in sorted(matches, key=lambda m: (m[1] - m[2], m[1])):
        if not taken.intersection(range(s, e)):
            out.append((key, s, e))
            taken.update(range(s, e))
    return out


_SLASH = re.compile(r"(?<=[A-Za-z])/(?=[A-Za-z])")
_WORD = re.compile(r"[a-z0-9]+")  # a word of a lower-cased text, for the cheap pre-check
# A list number glued to its item ("2.No effusion", "3)no edema", "(2)No effusion", and after the
# previous item's period, "effusion.2.No pneumothorax"): split it off like "2. No", or the item's
# first word (often its negation cue) is hidden inside one token.
_LIST_GLUE = re.compile(
    r"(?:(?<=^\d)|(?<=^\d\d)|(?<=^\(\d)|(?<=^\(\d\d)|(?<=[A-Za-z]\.\d)|(?<=[A-Za-z]\.\d\d))[.)](?=[A-Za-z])"
    r"|(?<=^\()\d{1,2}(?=\)[A-Za-z])"
    r"|(?<=[A-Za-z]{2})\.(?=\(?\d{1,2}[.)][A-Za-z])"
)


def _split_infixes(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Add two infix rules to scispacy's: letter/letter slashes and glued list numbers.

    scispacy keeps "NG/OG" or "scarring/atelectasis" as one token, which hides the findings from
    the matchers: a letter/letter slash is split. Terms and cue phrases go through the same
    tokenizer, so "ng/og tube" or "and/or" still match. A list number glued to its item is split
    off (``_LIST_GLUE``).
    """
    original = tokenizer.infix_finditer

    def finditer(text: str) -> list[re.Match]:
        matches = list(original(text))
        extra = []
        if "/" in text:
            extra += _SLASH.finditer(text)
        if "." in text or ")" in text:
            extra += _LIST_GLUE.finditer(text)
        if extra:
            taken = [(m.start(), m.end()) for m in matches]
            extra = [m for m in extra if not any(a < m.end() and m.start() < b for a, b in taken)]
            matches = sorted([*matches, *extra], key=lambda m: m.start())
        return matches

    tokenizer.infix_finditer = finditer


def build_nlp(lexicon_dir: str | None = None) -> Language:
    """A fresh pipeline: tokenizer, lexicon matcher, negation NegEx, uncertainty NegEx."""
    from scispacy.custom_tokenizer import combined_rule_tokenizer

    lexicon = load_lexicon(lexicon_dir)
    nlp = spacy.blank("en")
    with warnings.catch_warnings():
        # scispacy's tokenizer regexes trip a FutureWarning inside re.compile; nothing to fix here.
        warnings.filterwarnings("ignore", category=FutureWarning)
        nlp.tokenizer = combined_rule_tokenizer(nlp)
    _split_infixes(nlp.tokenizer)
    nlp.add_pipe("clip2clinic_lexicon", config={"lexicon_dir": lexicon.source})
    devices = sorted(f"F|{f.id}" for f in lexicon.findings.values() if f.observation == SUPPORT_DEVICES)
    for name, ext, termset in (
        ("negation", NEG_EXT, lexicon.negation),
        ("uncertainty", UNC_EXT, lexicon.uncertainty),
    ):
        nlp.add_pipe(
            "clip2clinic_negex",
            name=name,
            config={
                "neg_termset": termset.negspacy(),
                "extension_name": ext,
                "rule_prefix": termset.rule_prefix,
                "probable_terms": list(termset.probable_preceding + termset.probable_following),
                "probable_prefix": termset.probable_prefix,
                "alternative_terms": list(termset.alternative),
                # the other side of "X versus Y" must be a finding, not a structure ("heart")
                "alternative_labels": ["F|"],
                "removal_terms": list(termset.removal_preceding + termset.removal_following),
                "removal_labels": devices,
                "aux_key": AUX_KEY,
                # new clauses inside a negation's scope only: a hedge's list stays one
                # differential ("differential includes atelectasis, small infiltrate, scarring")
                "comma_clause_aux": ["M|severity|", "M|size|"] if name == "negation" else [],
                "and_clause_aux": ["M|severity|", "M|size|", "M|temporal|"] if name == "negation" else [],
            },
        )
    return nlp


# status, cue text, rule id, and the cue's character span in the sentence (None when no cue)
Decision = tuple[str, str | None, str, tuple[int, int] | None]


class TextEngine:
    """Sentence texts in, mention tuples out; one per process (see :func:`load_engine`)."""

    def __init__(self, nlp: Language, lexicon: Lexicon, cache_size: int = 100_000) -> None:
        self.nlp = nlp
        self.lexicon = lexicon
        self.cache_size = cache_size
        self._cache: dict[str, tuple[MentionHit, ...]] = {}
        self.stats = {"sentences": 0, "cached": 0, "skipped": 0, "parsed": 0}
        words: set[str] = set()
        prefixes: set[str] = set()
        terms = [t for f in lexicon.findings.values() for t in f.terms]
        terms += [t for a in lexicon.anchors.values() for t in a.terms]
        for term in terms:
            first = term.split(" ")[0]
            if first.endswith("*"):
                prefixes.add(first[:-1])
            else:
                words.update(_WORD.findall(first)[:1])
        self._words = frozenset(words)
        # a prefix at the start of a word (a run of [a-z0-9], as _WORD finds them)
        self._prefix_at = (
            re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, sorted(prefixes))) + ")")
            if prefixes
            else None
        )
        headers = sorted({h for h in lexicon.headers}, key=len, reverse=True)
        self._header = re.compile(
            r"(?i)(?<![A-Za-z])(?:" + "|".join(re.escape(h) for h in headers) + r")\s*:"
        )
        self._neg_prefix = lexicon.negation.rule_prefix + "."
        self._probable_prefix = (
            f"{lexicon.uncertainty.probable_prefix}." if lexicon.uncertainty.probable_prefix else None
        )

    # -- public ----------------------------------------------------------------------------------
    def analyse(self, texts: Sequence[str]) -> list[tuple[MentionHit, ...]]:
        """Mentions of each sentence text, offsets relative to that text. Pure per text.

        The cyclic collector is paused meanwhile (:func:`~pipeline.core.collector.collector_paused`):
        the engine's docs and hits make no reference cycles, and its passes would only re-read
        the memo.
        """
        with collector_paused():
            return self._analyse(texts)

    def _analyse(self, texts: Sequence[str]) -> list[tuple[MentionHit, ...]]:
        out: list[tuple[MentionHit, ...] | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        cache = self._cache
        cached = skipped = 0
        for i, text in enumerate(texts):
            hit = cache.pop(text, None)
            if hit is not None:
                cache[text] = hit  # refresh: most recently used last
                out[i] = hit
                cached += 1
            elif text in todo:
                todo[text].append(i)
            elif not self._has_term(text):
                out[i] = ()
                skipped += 1
            else:
                todo[text] = [i]
        # The components one doc at a time, not through nlp.pipe: none of them batches, and
        # nlp.pipe's chain of generators cost a fifth of the pipeline's time.
        steps = [proc for _, proc in self.nlp.pipeline]
        for text, at in todo.items():
            prepared, offsets = self._prepare(text)
            doc = self.make_doc(prepared)
            for step in steps:
                doc = step(doc)
            hits = tuple(self._to_original(h, text, offsets) for h in self._mentions(doc))
            self._remember(text, hits)
            for i in at:
                out[i] = hits
        stats = self.stats
        stats["sentences"] += len(texts)
        stats["cached"] += cached
        stats["skipped"] += skipped
        stats["parsed"] += len(todo)
        return out  # type: ignore[return-value]

    def clear_cache(self) -> None:
        self._cache.clear()

    def make_doc(self, text: str) -> Doc:
        """The tokenized doc of a prepared text, its :class:`Tokens` made from the text at hand."""
        doc = self.nlp.make_doc(text)
        doc.user_data[TOKENS_KEY] = Tokens(doc, text)
        return doc

    # -- text preparation --------------------------------------------------------------------------
    def _has_term(self, text: str) -> bool:
        """Whether a word of ``text`` is the first word of a term, or starts with a prefix term's."""
        lower = text.lower()
        if not self._words.isdisjoint(_WORD.findall(lower)):
            return True
        return self._prefix_at is not None and self._prefix_at.search(lower) is not None

    def _prepare(self, text: str) -> tuple[str, list[int] | None]:
        """Mask leaked section headers and collapse whitespace; returns (text, offset map or None).

        A header becomes ";" plus spaces (same length), so it ends any cue's scope and matches
        nothing. The map sends each character of the prepared text back to the original.
        """
        if ":" in text:
            text = self._header.sub(lambda m: ";" + " " * (len(m.group(0)) - 1), text)
        if not re.search(r"\s\s|[^\S ]", text):
            return text, None
        chars: list[str] = []
        offsets: list[int] = []
        prev_space = True  # also drops leading whitespace
        for i, ch in enumerate(text):
            if ch.isspace():
                if prev_space:
                    continue
                ch = " "
                prev_space = True
            else:
                prev_space = False
            chars.append(ch)
            offsets.append(i)
        offsets.append(len(text))
        return "".join(chars), offsets

    @staticmethod
    def _to_original(hit: MentionHit, text: str, offsets: list[int] | None) -> MentionHit:
        if offsets is None:
            return hit

        def span(a: int, b: int) -> tuple[int, int]:
            return offsets[a], offsets[b - 1] + 1

        start, end = span(hit.start, hit.end)
        cue_start, cue_end = span(hit.cue_start, hit.cue_end) if hit.cue_start is not None else (None, None)
        modifiers = tuple((k, v, *span(a, b)) for k, v, a, b in hit.modifiers)
        return hit._replace(
            start=start,
            end=end,
            text=text[start:end],
            cue_start=cue_start,
            cue_end=cue_end,
            modifiers=modifiers,
        )

    def _remember(self, text: str, hits: tuple[MentionHit, ...]) -> None:
        cache = self._cache
        if len(cache) >= self.cache_size:
            for key in list(cache)[: max(1, self.cache_size // 10)]:
                del cache[key]
        cache[text] = hits

    # -- one doc ------------------------------------------------------------------------------------
    def _mentions(self, doc: Doc) -> list[MentionHit]:
        ents = doc.user_data[ENTS_KEY]
        if not ents:
            return []
        lex = self.lexicon
        toks = tokens_of(doc)
        boundaries = doc.user_data[NEG_EXT]["boundaries"]
        chunk = [0] * len(toks)
        for k, (a, b) in enumerate(boundaries):
            chunk[a:b] = [k] * (b - a)
        attached, qualifiers = self._attach(doc, toks, ents, chunk)
        hits: list[MentionHit] = []
        for j, ent in enumerate(ents):
            kind, ident = ent.label_.split("|", 1)
            words = self._words_of(toks, attached[j])
            place = self._anatomy_of({k: v[0] for k, v in attached[j].items()})
            if kind == "F":
                finding = lex.findings[ident]
                if finding.kind == "statement":
                    decided: Decision = ("present", None, f"statement.{finding.id}", None)
                else:
                    decided = self._status(ent, ents, doc)
                hits.append(self._hit(toks, ent, finding, finding.observation, decided, place, words))
                continue
            anchor = lex.anchors[ident]
            qual = self._qualifier(ent, qualifiers, chunk, ents, toks)
            for reading in anchor.readings:
                finding = lex.findings[reading.finding]
                observation = finding.observation if reading.counts_toward_label else None
                if qual is not None and qual[0] in reading.when:
                    decided = self._qualified(ent, ents, doc, anchor, reading.when[qual[0]], qual)
                elif reading.default == "present":
                    decided = self._status(ent, ents, doc)
                else:
                    continue
                hits.append(self._hit(toks, ent, finding, observation, decided, place, words))
        return hits

    @staticmethod
    def _words_of(
        toks: Tokens, mods: dict[str, tuple[str, int, int]]
    ) -> tuple[tuple[str, str, int, int], ...]:
        """The attached words as (kind, value, start char, end char), anatomy first."""
        out = []
        packed = mods.get("anatomy") or mods.get("anatomy_in")
        if packed:
            out.append(("anatomy", packed[0].split("|")[0], packed[1], packed[2]))
        for kind in ("laterality", "severity", "size", "temporal"):
            if kind in mods:
                value, s, e = mods[kind]
                out.append((kind, value, s, e))
        return tuple((k, v, toks.starts[s], toks.ends[e - 1]) for k, v, s, e in out)

    def _hit(
        self,
        toks: Tokens,
        ent: Ent,
        finding: Finding,
        observation: str | None,
        decided: Decision,
        place: tuple[str | None, str | None],
        words: tuple[tuple[str, str, int, int], ...],
    ) -> MentionHit:
        status, cue, rule, cue_span = decided
        anatomy, laterality = place
        values = {k: v for k, v, _, _ in words}
        if finding.refine and anatomy in finding.refine:
            finding = self.lexicon.findings[finding.refine[anatomy]]
            observation = finding.observation if observation is not None else None
        start, end = toks.chars(ent.start, ent.end)
        return MentionHit(
            start,
            end,
            toks.text[start:end],
            finding.id,
            observation,
            status,
            cue,
            rule,
            anatomy or finding.anatomy,
            laterality,
            values.get("severity"),
            values.get("size"),
            values.get("temporal"),
            *(cue_span or (None, None)),
            words,
        )

    def _status(self, ent: Ent, ents: list[Ent], doc: Doc, extra: Cue | None = None) -> Decision:
        """Status, cue text, rule and cue character span of one mention.

        The nearer of the negation and the hedge decides (see :func:`decide`); a probable cue
        ("likely") gives present. An alternative ("X versus Y", "X and/or Y") makes the mention
        uncertain unless a negation decides it: as in the CheXpert labeler, which applies its
        "X versus Y" rule after negation, "no effusion and/or pneumothorax" denies both, while
        "likely atelectasis versus pneumonia" stays a differential.
        """
        toks = tokens_of(doc)
        neg, _ = cues_of(doc, NEG_EXT, ent)
        unc, alt = cues_of(doc, UNC_EXT, ent)
        if extra is not None:
            if extra.rule.startswith(self._neg_prefix):
                neg = extra
            else:
                unc = extra
        between = False
        if neg is not None and unc is not None and neg.end <= unc.start:
            between = any(neg.end <= e.start and e.end <= unc.start for e in ents)
        cue = decide(neg, unc, (ent.start, ent.end), between)
        if cue is not None and cue.rule.startswith(self._neg_prefix):
            return "absent", cue.text, cue.rule, toks.chars(cue.start, cue.end)
        probable = (
            cue is not None and bool(self._probable_prefix) and cue.rule.startswith(self._probable_prefix)
        )
        if alt is not None and (cue is None or probable):
            return "uncertain", alt.text, alt.rule, toks.chars(alt.start, alt.end)
        if cue is None:
            return "present", None, "default.present", None
        status = "present" if probable else "uncertain"
        return status, cue.text, cue.rule, toks.chars(cue.start, cue.end)

    def _qualified(
        self,
        ent: Ent,
        ents: list[Ent],
        doc: Doc,
        anchor: Anchor,
        status: str,
        qual: tuple[str, int, int, str],
    ) -> Decision:
        group, q_start, q_end, q_text = qual
        q_span = tokens_of(doc).chars(q_start, q_end)
        if status == "absent":
            return "absent", q_text, f"normal.{anchor.id}_{group}", q_span
        # "the heart is possibly enlarged": a cue between the anchor and its qualifier still counts.
        inner = None
        if q_start > ent.end:
            for ext in (NEG_EXT, UNC_EXT):
                for cue in doc.user_data[ext]["cues"]:
                    if cue.alternative:
                        continue
                    between = cue.direction == "preceding" and ent.end <= cue.start and cue.end <= q_start
                    if between and (inner is None or cue.start > inner.start):
                        inner = cue
        got = self._status(ent, ents, doc, extra=inner)
        if got[1] is not None:
            return got
        return status, q_text, f"qual.{anchor.id}_{group}", q_span

    @staticmethod
    def _qualifier(
        ent: Ent,
        qualifiers: list[tuple[str, int, int, str]],
        chunk: list[int],
        ents: list[Ent],
        toks: Tokens,
        claimed: bool = True,
    ) -> tuple[str, int, int, str] | None:
        """The nearest qualifier after (up to 8 tokens) or just before (up to 2) the anchor.

        A qualifier after a comma that premodifies the next structure belongs to that structure:
        in "stable heart size, moderately enlarged and tortuous aorta" the aorta is enlarged, not
        the heart ("heart size normal lungs clear", without the comma, keeps "normal"). A
        qualifier an earlier anchor takes as its predicate is not also a premodifier of a later
        one: in "heart size is normal and lungs are opacified" the lungs are not normal
        (``claimed``: check that; off inside the check itself).
        """
        best = None
        best_d = 10**9
        c = chunk[ent.start]
        for q in qualifiers:
            _, s, e, _ = q
            if chunk[s] != c:
                continue
            if s >= ent.end and s - ent.end <= QUALIFIER_AFTER:
                d = s - ent.end
                if "," in toks.texts[ent.end : s] and any(
                    other.start >= e
                    and other.start - e <= QUALIFIER_PREMODIFIES
                    and not any(toks.punct[e : other.start])
                    for other in ents
                ):
                    continue
            elif e <= ent.start and ent.start - e <= QUALIFIER_BEFORE:
                d = ent.start - e
                if claimed and any(
                    o.label_[0] == "A"
                    and o.end <= s
                    and chunk[o.start] == c
                    and TextEngine._qualifier(o, qualifiers, chunk, ents, toks, claimed=False) == q
                    for o in ents
                ):
                    continue
            else:
                continue
            if d < best_d or (d == best_d and s >= ent.end):
                best, best_d = q, d
        return best

    def _attach(
        self, doc: Doc, toks: Tokens, ents: list[Ent], chunk: list[int]
    ) -> tuple[list[dict[str, tuple[str, int, int]]], list[tuple[str, int, int, str]]]:
        """Give each anatomy/laterality/modifier match to its nearest mention in the same clause.

        Returns, per mention, slot -> (value, start token, end token), and the doc's qualifiers.

        A word inside a finding belongs to it ("pleural" in "pleural effusion"). A word inside an
        anchor belongs to the anchor, and its anatomy may also give a site to a generic finding
        nearby: in "fractures of the right 5th ribs", "ribs" (an anchor of its own) refines the
        fracture into a rib fracture.
        """
        findings = self.lexicon.findings
        best: list[dict[str, tuple[int, str, int, int]]] = [{} for _ in ents]
        qualifiers: list[tuple[str, int, int, str]] = []
        finding_tokens: set[int] | None = None  # made for the first qualifier

        def give(j: int, distance: int, inside: bool, tag: str, key: str, s: int, e: int) -> None:
            if tag == "N":
                _, anat, lat = key.split("|")
                slot, value = ("anatomy_in" if inside else "anatomy"), f"{anat}|{lat}"
            elif tag == "L":
                slot, value = "laterality", key[2:]
            else:
                _, slot, value = key.split("|")
            old = best[j].get(slot)
            if old is None or distance < old[0]:
                best[j][slot] = (distance, value, s, e)

        for key, s, e in doc.user_data[AUX_KEY]:
            tag = key[0]
            if tag == "Q":
                # "engorgement" in "heart size and vascular engorgement appear normal" is the
                # congestion finding, not a qualifier of the heart
                if finding_tokens is None:
                    finding_tokens = {
                        i for ent in ents if ent.label_[0] == "F" for i in range(ent.start, ent.end)
                    }
                if not finding_tokens.intersection(range(s, e)):
                    qualifiers.append((key[2:], s, e, toks.span_text(s, e)))
                continue
            window = MODIFIER_WINDOW if tag == "M" else ANATOMY_WINDOW
            target, target_key = -1, (10**9, 1)
            site_only = False  # inside an anchor: only a finding refined by this site may take it
            for j, ent in enumerate(ents):
                if chunk[ent.start] != chunk[s]:
                    continue
                if s >= ent.start and e <= ent.end:
                    if ent.label_[0] == "F":
                        target, target_key = j, (0, 0)
                        break
                    give(j, 0, True, tag, key, s, e)
                    site_only = True
                    continue
                if s < ent.end and e > ent.start:
                    d = 0
                elif e <= ent.start:
                    d = ent.start - e
                else:
                    d = s - ent.end
                if d > window:
                    continue
                # on a tie the mention after the word wins: modifiers come first in English
                rank = (d, 0 if e <= ent.start else 1)
                if rank < target_key:
                    target, target_key = j, rank
            if target >= 0:
                ent = ents[target]
                if site_only and not (
                    tag == "N"
                    and ent.label_[0] == "F"
                    and key.split("|")[1] in findings[ent.label_[2:]].refine
                ):
                    continue
                give(target, target_key[0], s >= ent.start and e <= ent.end, tag, key, s, e)
        return [{k: (v, a, b) for k, (_, v, a, b) in slots.items()} for slots in best], qualifiers

    @staticmethod
    def _anatomy_of(mods: dict[str, str]) -> tuple[str | None, str | None]:
        packed = mods.get("anatomy") or mods.get("anatomy_in")
        anatomy = implied = None
        if packed:
            anatomy, implied = packed.split("|")
        return anatomy, mods.get("laterality") or implied or None


def load_nlp(lexicon_dir: str | None = None) -> Language:
    """The process-wide pipeline for ``lexicon_dir`` (None: the bundled lexicon), built once."""
    return _nlp(load_lexicon(lexicon_dir).source)


def load_engine(lexicon_dir: str | None = None, cache_size: int = 100_000) -> TextEngine:
    """The process-wide :class:`TextEngine` (pipeline and sentence memo) for a lexicon."""
    return _engine(load_lexicon(lexicon_dir).source, cache_size)


@functools.cache
def _nlp(source: str) -> Language:
    return build_nlp(source)


@functools.cache
def _engine(source: str, cache_size: int) -> TextEngine:
    engine = TextEngine(_nlp(source), load_lexicon(source), cache_size)
    # The engine holds about 270,000 long-lived objects (spaCy's vocabulary and matchers, the
    # lexicon) that every full collection would traverse again, a quarter of a second each time:
    # in a worker, 16% of extract. Freezing moves what the process holds now out of the
    # collector's reach for good (collected first, so no garbage is kept).
    gc.collect()
    gc.freeze()
    return engine
