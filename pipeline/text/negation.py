"""Negation and uncertainty with negspacy's NegEx, plus the cue that decided each status.

negspacy's ``Negex`` only sets a boolean on each entity. :class:`CueNegex` keeps its termset
handling (phrase matcher, pseudo-negation filtering, termination boundaries) and records which cue
fired, so every mention carries a ``cue`` and a stable ``rule`` id
(``neg.preceding.no``, ``unc.following.cannot_be_excluded``). Two instances run: one with the
negation termset, one with the uncertainty termset (both from the lexicon data files).

Docs reaching these components are single sentences (the extract stage feeds sentences), so the
only boundaries are the termination phrases ("but", "however", ";").

Entities are :class:`Ent` tuples in ``doc.user_data[ENTS_KEY]`` (the lexicon matcher puts them
there), and the decisions go to ``doc.user_data``, not to spaCy ``Span`` objects and their ``._``
extensions: building those for every entity, several times per doc, cost more than the matching.
Tokens are read from :class:`Tokens`, the doc's words as plain lists: indexing a ``Doc`` makes a
new ``Token`` object at every look, and that was the engine's most called function.
"""

from __future__ import annotations

import functools
import operator
import re
from typing import NamedTuple

from negspacy.negation import Negex
from spacy.lang import lex_attrs
from spacy.language import Language
from spacy.tokens import Doc

# how many tokens may stand between a finding and the "or"/"versus" that joins it to another
ALTERNATIVE_GAP = 3
ALTERNATIVE_SITE_GAP = 6  # when the words between name a site
_SITE_WORDS = frozenset(
    [
        "in",
        "of",
        "at",
        "within",
        "the",
        "a",
        "an",
        "along",
        "involving",
        "zone",
        "zones",
        "region",
        "regions",
        "aspect",
        "portion",
        "segment",
        "side",
        "base",
        "bases",
        "field",
        "fields",
        "lobe",
        "lobes",
    ]
)
# a device's parts: what a following "not seen" near them denies ("the catheter tip is not seen")
_DEVICE_PARTS = frozenset({"tip", "tips", "end", "ends"})
_CONJUNCTIONS = frozenset({"and", "or", "nor", "and/or"})
_PUNCT_NAMES = {"?": "question_mark", ";": "semicolon", ":": "colon", ".": "period", ",": "comma"}
ENTS_KEY = "c2c_ents"
TOKENS_KEY = "c2c_tokens"


class Tokens:
    """A doc's tokens as plain sequences, read from spaCy once per doc (see the module doc).

    ``lowers`` are the tokens' ``lower_`` and ``punct``/``alpha`` their ``is_punct``/``is_alpha``,
    computed by the same functions spaCy's blank English applies to a new word (``str.lower``,
    :func:`spacy.lang.lex_attrs.is_punct`, ``str.isalpha``), the flags on first use; ``starts`` and
    ``ends`` are character offsets in ``text``. ``text``: the doc's text when the caller has it
    (``doc.text`` joins every token again).
    """

    __slots__ = ("_alpha", "_punct", "ends", "lower", "lowers", "starts", "text", "texts")

    def __init__(self, doc: Doc, text: str | None = None) -> None:
        # one pass over spaCy's tokens, the rest by C-level map and zip (a Python loop per
        # token per list cost as much as the tokenizer's own work)
        pairs = [(t.text, t.idx) for t in doc]
        texts, starts = zip(*pairs, strict=True) if pairs else ((), ())  # tuples: read only
        self.text = doc.text if text is None else text
        self.lower = self.text.lower()
        self.texts = texts
        self.lowers = list(map(str.lower, texts))
        self.starts = starts
        self.ends = list(map(operator.add, starts, map(len, texts)))
        self._punct: list[bool] | None = None
        self._alpha: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def punct(self) -> list[bool]:
        if self._punct is None:
            self._punct = list(map(_is_punct, self.texts))
        return self._punct

    @property
    def alpha(self) -> list[bool]:
        if self._alpha is None:
            self._alpha = list(map(str.isalpha, self.texts))
        return self._alpha

    def chars(self, start: int, end: int) -> tuple[int, int]:
        """Character span of tokens ``start:end`` (not empty)."""
        return self.starts[start], self.ends[end - 1]

    def span_text(self, start: int, end: int) -> str:
        """``doc[start:end].text``."""
        return self.text[self.starts[start] : self.ends[end - 1]] if start < end else ""


_is_punct = functools.lru_cache(maxsize=1 << 16)(lex_attrs.is_punct)


def tokens_of(doc: Doc) -> Tokens:
    """The doc's :class:`Tokens`, made on first use and kept in ``doc.user_data[TOKENS_KEY]``."""
    toks = doc.user_data.get(TOKENS_KEY)
    if toks is None:
        toks = doc.user_data[TOKENS_KEY] = Tokens(doc)
    return toks


class Ent(NamedTuple):
    """An entity of a doc in token offsets (``label_`` as spaCy's ``Span`` calls it)."""

    label_: str
    start: int
    end: int


def doc_ents(doc: Doc) -> list[Ent]:
    """The doc's entities in token order: ``doc.user_data[ENTS_KEY]`` when a component put them
    there (the lexicon matcher), else ``doc.ents``."""
    ents = doc.user_data.get(ENTS_KEY)
    if ents is None:
        return [Ent(e.label_, e.start, e.end) for e in doc.ents]
    return ents


def rule_slug(phrase: str) -> str:
    """A rule-id fragment for a cue phrase: ``"cannot be excluded"`` -> ``cannot_be_excluded``."""
    if phrase in _PUNCT_NAMES:
        return _PUNCT_NAMES[phrase]
    slug = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
    return slug or "symbol"


class Cue(NamedTuple):
    """A cue match in token offsets of its doc. ``direction`` is preceding or following."""

    direction: str
    start: int
    end: int
    text: str
    rule: str
    alternative: bool = False
    removal: bool = False

    def distance(self, ent_start: int, ent_end: int) -> int:
        if self.direction == "preceding":
            return max(ent_start - self.end, 0)
        return max(self.start - ent_end, 0)


@Language.factory(
    "clip2clinic_negex",
    default_config={
        "neg_termset": None,
        "extension_name": "c2c_neg",
        "rule_prefix": "neg",
        "ent_types": [],
        "probable_terms": [],
        "probable_prefix": None,
        "alternative_terms": [],
        "alternative_labels": [],
        "removal_terms": [],
        "removal_labels": [],
        "aux_key": None,
        "comma_clause_aux": [],
        "and_clause_aux": [],
    },
)
def make_cue_negex(
    nlp,
    name,
    neg_termset,
    extension_name,
    rule_prefix,
    ent_types,
    probable_terms,
    probable_prefix,
    alternative_terms,
    alternative_labels,
    removal_terms,
    removal_labels,
    aux_key,
    comma_clause_aux,
    and_clause_aux,
):  # type: ignore[no-untyped-def]
    # No annotations: spaCy validates factory arguments from them, and this module's postponed
    # (string) annotations cannot be resolved there.
    return CueNegex(
        nlp,
        name,
        neg_termset,
        ent_types,
        extension_name,
        [],
        rule_prefix,
        probable_terms=probable_terms,
        probable_prefix=probable_prefix,
        alternative_terms=alternative_terms,
        alternative_labels=alternative_labels,
        removal_terms=removal_terms,
        removal_labels=removal_labels,
        aux_key=aux_key,
        comma_clause_aux=comma_clause_aux,
        and_clause_aux=and_clause_aux,
    )


class CueNegex(Negex):
    """negspacy's Negex that also records the deciding cue of each entity.

    ``doc.user_data["<extension_name>"]`` holds the doc's ``cues`` and ``boundaries`` and, under
    ``decided``, (cue, alternative cue) by each entity's (start, end) token offsets, for the
    entities a cue reaches (:func:`cues_of`). The deciding cue is the nearest one in the entity's
    boundary: the last preceding cue before it, or the first following cue after it, whichever is
    closer.

    Alternative cues ("versus", "and/or": ``alternative_terms``) join a differential, so their
    scope is narrower than Negex's: one reaches only the entity right next to it (no other finding
    in between), and only when its other side holds a finding or at least a word. Findings are
    the entities whose label starts with one of ``alternative_labels`` (all when empty). "Cardiomegaly with
    atelectasis versus scarring" hedges the atelectasis and the scarring, not the cardiomegaly;
    "1.5 cm vs. 1.2 cm" hedges nothing (and "vs. prior" is a pseudo cue of the termset).
    The nearest such cue is the entity's alternative cue, apart from the other cues, so
    the caller can let a negation win over it (the CheXpert labeler reads "X or Y" only after
    negation: "no effusion or pneumothorax" denies both).

    Removal cues (``removal_terms``: "removal of", "has been removed") reach only the entities
    labelled ``removal_labels`` (devices): "interval removal of the chest tube, with a small
    residual pneumothorax" leaves the pneumothorax present.

    Besides the termset's termination phrases, two places open a new clause (a boundary) when the
    clause words are given (the negation instance: a hedge's list stays one differential), read
    from the lexicon matcher's matches in ``doc.user_data[aux_key]``: a comma or an "and" before
    a finding with its own size or severity (``comma_clause_aux``: "no pneumothorax, small left
    effusion", "no effusion and mild edema"), unless the list goes on with "or"/"nor" ("no
    consolidation, large effusion, or pneumothorax"); or before a finding with its own
    predicate, a temporal, severity or size word right after it (``and_clause_aux``: "no
    pneumothorax and effusion is unchanged").
    """

    def __init__(
        self,
        nlp: Language,
        name: str,
        neg_termset: dict,
        ent_types: list,
        extension_name: str,
        chunk_prefix: list,
        rule_prefix: str,
        probable_terms: list[str] | None = None,
        probable_prefix: str | None = None,
        alternative_terms: list[str] | None = None,
        alternative_labels: list[str] | None = None,
        removal_terms: list[str] | None = None,
        removal_labels: list[str] | None = None,
        aux_key: str | None = None,
        comma_clause_aux: list[str] | None = None,
        and_clause_aux: list[str] | None = None,
    ) -> None:
        super().__init__(nlp, name, neg_termset, ent_types, extension_name, chunk_prefix)
        self.alternative = {
            " ".join(t.lower_ for t in doc) for doc in nlp.tokenizer.pipe(alternative_terms or [])
        }
        self.alternative_labels = tuple(alternative_labels or ())
        self.removal = {" ".join(t.lower_ for t in doc) for doc in nlp.tokenizer.pipe(removal_terms or [])}
        self.removal_labels = frozenset(removal_labels or ())
        self.aux_key = aux_key
        self.comma_clause_aux = tuple(comma_clause_aux or ())
        self.and_clause_aux = tuple(and_clause_aux or ())
        self.rule_prefix = rule_prefix
        # cues given another rule prefix ("likely"), keyed by their lower-cased tokens
        self.probable_prefix = probable_prefix
        self.probable = {" ".join(t.lower_ for t in doc) for doc in nlp.tokenizer.pipe(probable_terms or [])}
        # rule ids name the termset phrase ("cannot be excluded"), not its tokens ("can not ...")
        self.phrases: dict[str, str] = {}
        for phrase in [*neg_termset["preceding_negations"], *neg_termset["following_negations"]]:
            self.phrases.setdefault(" ".join(t.lower_ for t in nlp.make_doc(phrase)), phrase)
        strings = nlp.vocab.strings
        self._label_direction = {strings["Preceding"]: "preceding", strings["Following"]: "following"}
        self._pseudo_id = strings["pseudo"]
        self._kind_of = {strings["Preceding"]: 0, strings["Following"]: 1, strings["Termination"]: 2}
        # (match id, lower-cased cue) -> what a Cue needs besides its place and text
        self._cue_rules: dict[tuple[int, str], tuple[str, str, bool, bool]] = {}

    def process_negations(self, doc: Doc) -> tuple[list, list, list]:
        """negspacy's: the termset's matches less those starting inside a pseudo cue (its end
        included), split into preceding, following and terminating; match ids compared as ids."""
        out: tuple[list, list, list] = ([], [], [])
        matches = self.matcher(doc)
        pseudo = [(s, e) for m, s, e in matches if m == self._pseudo_id]
        kind_of = self._kind_of
        for m, s, e in matches:
            kind = kind_of.get(m)
            if kind is None or (pseudo and any(a <= s <= b for a, b in pseudo)):
                continue
            out[kind].append((m, s, e))
        return out

    def termination_boundaries(self, doc: Doc, terminating: list) -> list[tuple[int, int]]:
        # Negex reads doc.sents, which a blank pipeline does not set; a doc here is one sentence.
        n = len(doc)
        clauses = self._clause_starts(doc)
        if not terminating and not clauses:
            return [(0, n)] if n else []
        starts = sorted({0, *(t[1] for t in terminating), *clauses, n})
        return [(a, b) for a, b in zip(starts, starts[1:], strict=False) if a < b]

    def _clause_starts(self, doc: Doc) -> list[int]:
        """Token indices where a new clause opens at a comma or an "and" (see the class doc)."""
        if self.aux_key is None or not (self.comma_clause_aux or self.and_clause_aux) or not doc_ents(doc):
            return []
        toks = tokens_of(doc)
        if "," not in toks.texts and "and" not in toks.lowers:
            return []  # (the cheap check first: most sentences have neither)
        aux = doc.user_data.get(self.aux_key, ())
        before_words = [(s, e) for key, s, e in aux if key.startswith(self.comma_clause_aux)]
        after_words = [(s, e) for key, s, e in aux if key.startswith(self.and_clause_aux)]
        if not before_words and not after_words:
            return []
        texts, lowers, punct = toks.texts, toks.lowers, toks.punct
        findings = [e for e in doc_ents(doc) if e.label_.startswith(self.alternative_labels or ("",))]
        starts = []
        for i, (text, lower) in enumerate(zip(texts, lowers, strict=True)):
            comma = text == ","
            if not comma and lower != "and":
                continue
            nxt = next((e for e in findings if e.start > i), None)
            if nxt is None or nxt.start - i > 4 or any(punct[i + 1 : nxt.start]):
                continue
            # "no pneumothorax, small left effusion": its own size or severity, unless a list goes on
            rest = texts[nxt.end :]
            stop = next((k for k, t in enumerate(rest) if t in (";", ".")), len(rest))
            # (a list goes on: "or"/"nor" after it, a conjunction after the comma, or commas
            # before the "and": "no consolidation, pneumothorax, or large effusion")
            listed = (
                any(w in ("or", "nor") for w in lowers[nxt.end : nxt.end + stop])
                or any(w in _CONJUNCTIONS for w in lowers[i + 1 : nxt.start])
                or (not comma and "," in texts[:i])
            )
            sized = not listed and any(i < s and e <= nxt.end for s, e in before_words)
            # "no pneumothorax and effusion is unchanged": its own predicate, a word after it that
            # does not premodify the next finding ("no consolidation, pneumothorax or large effusion")
            predicate = any(
                nxt.end <= s
                and e <= nxt.end + 4
                and not any(punct[k] or lowers[k] in _CONJUNCTIONS for k in range(nxt.end, s))
                and not any(f.start >= e and f.start - e <= 3 for f in findings)
                for s, e in after_words
            )
            if sized or predicate:
                starts.append(i + 1 if comma else i)
        return starts

    def _cue(self, match_id: int, start: int, end: int, toks: Tokens) -> Cue:
        key = " ".join(toks.lowers[start:end])
        rule = self._cue_rules.get((match_id, key))
        if rule is None:
            direction = self._label_direction[match_id]
            prefix = self.probable_prefix if key in self.probable else self.rule_prefix
            rule = self._cue_rules[match_id, key] = (
                direction,
                f"{prefix}.{direction}.{rule_slug(self.phrases.get(key, key))}",
                key in self.alternative,
                key in self.removal,
            )
        direction, rule_id, alternative, removal = rule
        return Cue(direction, start, end, toks.span_text(start, end), rule_id, alternative, removal)

    def _alternative_reaches(
        self, cue: Cue, ent: Ent, ents: list[Ent], doc: Doc, b_start: int, b_end: int
    ) -> bool:
        """Whether an alternative cue joins ``ent`` to something on its other side.

        ``ents`` and ``b_start``/``b_end``: the entities and bounds of the cue's clause. ``ent``
        must be a finding, the one next to the cue (a structure such as "heart" is never hedged
        by an alternative). The other side must hold a finding, or else at least a
        word ("air trapping versus inspiratory effort"), not a number ("1.5 cm vs. 1.2 cm") or
        nothing; comparisons with a prior study are pseudo cues in the termset.
        """
        before = cue.end <= ent.start
        if not before and cue.start < ent.end:
            return False  # the cue overlaps the entity
        if (cue.direction == "preceding") != before:
            return False
        if self.alternative_labels:
            if not ent.label_.startswith(self.alternative_labels):
                return False
            ents = [e for e in ents if e.label_.startswith(self.alternative_labels)]
        toks = tokens_of(doc)
        # a differential joins its neighbours: a few words at most between, no punctuation
        # ("effusion, possibly from pleuritis or ..." is no differential of the effusion)
        gap = range(cue.end, ent.start) if before else range(ent.end, cue.start)
        if any(toks.punct[gap.start : gap.stop]):
            return False
        if len(gap) > ALTERNATIVE_GAP:
            # or a longer site: "atelectasis in the right midlung zone versus scarring"
            sites = {
                i for key, s, e in doc.user_data.get(self.aux_key, ()) if key[0] in "NL" for i in range(s, e)
            }
            if len(gap) > ALTERNATIVE_SITE_GAP or not all(
                i in sites or toks.lowers[i] in _SITE_WORDS for i in gap
            ):
                return False
        if cue.direction == "preceding":
            if any(e.start >= cue.end and e.end <= ent.start for e in ents):
                return False
            other = [e for e in ents if e.end <= cue.start]
            other_one = max(other, key=lambda e: e.end) if other else None
            neighbour = cue.start - 1 if cue.start - 1 >= b_start else None
        else:
            if any(e.start >= ent.end and e.end <= cue.start for e in ents):
                return False
            other = [e for e in ents if e.start >= cue.end]
            other_one = min(other, key=lambda e: e.start) if other else None
            neighbour = cue.end if cue.end < b_end else None
        if other_one is not None:
            return True
        if neighbour is None or not toks.alpha[neighbour]:
            return False
        if cue.direction == "following":
            return True
        # "acute or subacute fracture", "mild or moderate effusion": the alternatives are the
        # finding's modifiers, the finding itself is stated
        modifiers = [(s, e) for key, s, e in doc.user_data.get(self.aux_key, ()) if key.startswith("M|")]
        return not any(s <= neighbour < e for s, e in modifiers)

    @staticmethod
    def _own_subject(toks: Tokens, ents: list[Ent], ent: Ent, cue: Cue) -> bool:
        """Whether a following cue has its own subject after a comma, out of ``ent``'s clause:
        "small right effusion, pneumonia cannot be excluded" hedges the pneumonia only, while
        "pneumothorax, effusion, or consolidation is not seen" is one list."""
        commas = [i for i in range(ent.end, cue.start) if toks.texts[i] == ","]
        if not commas:
            return False
        start = commas[-1] + 1
        return any(start <= e.start and e.end <= cue.start for e in ents) and not any(
            w in _CONJUNCTIONS for w in toks.lowers[start : cue.start]
        )

    def negex(self, doc: Doc) -> Doc:
        all_ents = doc_ents(doc)
        if not all_ents:
            # nothing to decide, and the engine reads no cue of a doc without mentions
            doc.user_data[self.extension_name] = {"cues": [], "boundaries": [], "decided": {}}
            return doc
        toks = tokens_of(doc)
        preceding, following, terminating = self.process_negations(doc)
        boundaries = self.termination_boundaries(doc, terminating)
        cues = [self._cue(m, s, e, toks) for m, s, e in preceding + following]
        decided: dict[tuple[int, int], tuple[Cue | None, Cue | None]] = {}
        for b_start, b_end in boundaries:
            inside = [c for c in cues if b_start <= c.start < b_end]
            if not inside:
                continue
            preceding_spans = [
                (c.start, c.end) for c in inside if c.direction == "preceding" and not c.alternative
            ]
            ents = [e for e in all_ents if e.start >= b_start and e.end <= b_end]
            for ent in ents:
                if self.ent_types and ent.label_ not in self.ent_types:
                    continue
                best: Cue | None = None
                alt: Cue | None = None
                for cue in inside:
                    if cue.removal and ent.label_ not in self.removal_labels:
                        continue
                    if (
                        cue.direction == "following"
                        and ent.label_ in self.removal_labels
                        and any(
                            w in _DEVICE_PARTS for w in toks.lowers[max(b_start, ent.start - 3) : cue.start]
                        )
                    ):
                        # "enteric tube below the diaphragm, tip not seen": the tip, not the tube
                        continue
                    if cue.alternative:
                        # as any following cue, it does not reach back past a preceding one
                        # ("opacity may represent pleural or pericardial fat")
                        past = cue.direction == "following" and any(
                            ent.end <= p_start and p_end <= cue.start for p_start, p_end in preceding_spans
                        )
                        if (
                            not past
                            and self._alternative_reaches(cue, ent, ents, doc, b_start, b_end)
                            and (
                                alt is None
                                or cue.distance(ent.start, ent.end) < alt.distance(ent.start, ent.end)
                            )
                        ):
                            alt = cue
                        continue
                    # Negex's own scope rules: a preceding cue starts before the entity, a
                    # following cue ends after it. Ours adds one limit: a following cue does not
                    # reach back past a preceding cue, so in "opacity may represent atelectasis
                    # versus pneumonia" the "versus" hedges atelectasis, not the opacity.
                    reaches = (cue.direction == "preceding" and cue.start < ent.start) or (
                        cue.direction == "following"
                        and cue.end > ent.end
                        and not any(
                            ent.end <= p_start and p_end <= cue.start for p_start, p_end in preceding_spans
                        )
                        and not self._own_subject(toks, ents, ent, cue)
                    )
                    if reaches and (
                        best is None or cue.distance(ent.start, ent.end) < best.distance(ent.start, ent.end)
                    ):
                        best = cue
                if best is not None or alt is not None:
                    decided[ent.start, ent.end] = (best, alt)
        doc.user_data[self.extension_name] = {"cues": cues, "boundaries": boundaries, "decided": decided}
        return doc


def cues_of(doc: Doc, extension_name: str, ent: Ent) -> tuple[Cue | None, Cue | None]:
    """(deciding cue, alternative cue) of ``ent`` by the :class:`CueNegex` named
    ``extension_name``; (None, None) when no cue reaches it."""
    return doc.user_data[extension_name]["decided"].get((ent.start, ent.end), (None, None))


def decide(neg: Cue | None, unc: Cue | None, span: tuple[int, int], ents_between: bool) -> Cue | None:
    """Pick the cue that decides a mention's status when both termsets reach it.

    The nearer cue wins, except that a preceding negation before a preceding hedge wins when no
    other mention lies between them: "no findings suggestive of pneumonia" denies pneumonia, while
    in "no pneumothorax, possible effusion" the negation belongs to the pneumothorax. On a tie
    (overlapping cues) the hedge wins, as in the CheXpert labeler's pre-negation uncertainty.
    ``span`` is the mention's token span; ``ents_between`` says whether a mention lies between
    the negation cue and the hedge.
    """
    if neg is None or unc is None:
        return neg or unc
    if neg.direction == unc.direction == "preceding" and neg.end <= unc.start and not ents_between:
        return neg
    return neg if neg.distance(*span) < unc.distance(*span) else unc
