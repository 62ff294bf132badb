"""Report text for the demo dump, with the truth of every assertion it makes.

``ReportWriter.compose`` draws a study's clinical state, writes a MIMIC-CXR style report for it and
returns, beside the text, every (section, finding, status) it asserted and the CheXpert labels of
the section the official labeler reads: the last impression, else the last findings, else the
paragraphs after the first blank line of the last section (MIT-LCP's section parser). Pure: all
randomness comes from the ``random.Random`` passed in, so a seed fixes the text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.demo.phrases import OBSERVATIONS, FindingSpec, PhraseBank, Template

WIDTH = 78  # characters after the one-space indent: lines end near 79 like MIMIC's
BANNER = " " * 33 + "FINAL REPORT"
ADDENDUM_BANNER = " " * 33 + "FINAL ADDENDUM"
RULE = " " + "_" * 78
_RANK = {"absent": 1, "uncertain": 2, "present": 3}
_OBS_INDEX = {name: i for i, name in enumerate(OBSERVATIONS)}
_NO_FINDING = _OBS_INDEX["No Finding"]
_SUPPORT = _OBS_INDEX["Support Devices"]
_VOWEL_NUMBERS = ("8", "11", "18")
_KIND_WEIGHTS = (0.82, 0.125, 0.055)  # impression, findings only, neither (MIMIC's shares)
_N_PATTERNS = ((0, 0.38), (1, 0.42), (2, 0.16), (3, 0.04))


class _Mods(dict[str, str]):
    """Modifier values of one finding in one study (or subject), drawn on first use."""

    __slots__ = ("_choices", "_rng")

    def __init__(self, rng: random.Random, choices: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        self._rng = rng
        self._choices = choices

    def __missing__(self, key: str) -> str:
        value = self._rng.choice(self._choices[key])
        self[key] = value
        return value


@dataclass(slots=True)
class _Instance:
    status: str
    mods: _Mods
    chronic: bool = False


@dataclass(slots=True)
class SubjectState:
    """What persists across one subject's studies: chronic findings and the last study's devices."""

    chronic: dict[str, _Instance] = field(default_factory=dict)
    devices: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class StudyContext:
    """What the report of one study may refer to."""

    procedure: str  # EXAMINATION text, e.g. CHEST (PA AND LAT)
    portable: bool
    has_prior: bool
    line_placement: bool = False


@dataclass(frozen=True, slots=True)
class Mention:
    """One asserted fact: a finding with a status in a section, and the sentence that says it."""

    section: str
    finding: str
    observation: str | None
    status: str
    kind: str
    sentence: str
    labeled: bool


@dataclass(frozen=True, slots=True)
class ComposedReport:
    """A report's text, the section the labeler reads, its mentions and its 14 CheXpert labels."""

    text: str
    kind: str  # impression, findings or neither
    label_section: str  # impression, findings or last_paragraph
    mentions: tuple[Mention, ...]
    labels: tuple[float | None, ...]  # in OBSERVATIONS order


@dataclass(slots=True)
class _Sentence:
    text: str
    facts: list[tuple[str, str]]
    kind: str


def wrap(text: str, width: int = WIDTH) -> list[str]:
    """Greedy wrap on spaces; a word longer than ``width`` stays whole on its own line."""
    lines: list[str] = []
    while len(text) > width:
        cut = text.rfind(" ", 0, width + 1)
        if cut <= 0:
            cut = text.find(" ", width)
            if cut < 0:
                break
        lines.append(text[:cut].rstrip(" "))
        text = text[cut:].lstrip(" ")
    lines.append(text)
    return lines


def _indent(text: str, prefix: str = " ") -> list[str]:
    return [prefix + line for line in wrap(text)]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_start(text: str) -> str:
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first.isupper():  # acronyms (ET, NG, ETT) keep their case
        return text
    return text[:1].lower() + text[1:]


def _article(phrase: str) -> str:
    word = phrase.split(" ", 1)[0]
    lower = word.lower()
    if len(word) > 1 and word[0].isupper() and (word[1].isupper() or word[1].isdigit()):
        vowel_sound = word[0] in "AEFHILMNORSX"  # letters said with a vowel first: an L1, an NG tube
    else:
        vowel_sound = lower.startswith(_VOWEL_NUMBERS) or (
            lower[:1] in "aeiou" and not lower.startswith(("uni", "one"))
        )
    return ("an " if vowel_sound else "a ") + phrase


def observation_labels(facts: Sequence[tuple[str, str]], bank: PhraseBank) -> tuple[float | None, ...]:
    """CheXpert aggregation of (finding, status) facts into the 14 observations.

    Per observation: present if any fact is present, else uncertain if any is, else absent if any
    is, else None. No Finding is 1.0 when no observation but Support Devices is present or
    uncertain, else None.
    """
    best: dict[int, int] = {}
    for finding, status in facts:
        obs = bank.findings[finding].observation
        if obs is None:
            continue
        i = _OBS_INDEX[obs]
        rank = _RANK[status]
        if rank > best.get(i, 0):
            best[i] = rank
    values: list[float | None] = [None] * len(OBSERVATIONS)
    inv = {1: 0.0, 2: -1.0, 3: 1.0}
    for i, rank in best.items():
        values[i] = inv[rank]
    if not any(rank >= 2 for i, rank in best.items() if i != _SUPPORT):
        values[_NO_FINDING] = 1.0
    return tuple(values)


class ReportWriter:
    """Composes reports from one phrase bank and one random stream (see the module docstring)."""

    def __init__(self, bank: PhraseBank, rng: random.Random) -> None:
        self.bank = bank
        self.rng = rng
        self._mods = dict(bank.mods)
        self._region_order = {"devices": 0, "lungs": 1, "pleura": 2, "heart": 3, "bones": 4, "other": 5}
        self._pattern_weights = [p.weight for p in bank.patterns]
        self._impression_headers = bank.headers["impression"]
        self._impression_headers_with_findings = tuple(
            h for h in bank.headers["impression"] if "FINDINGS" not in h
        )

    # -- state ---------------------------------------------------------------------------------

    def new_subject(self) -> SubjectState:
        """Draw a subject's chronic findings."""
        rng = self.rng
        chronic = {
            key: _Instance("present", _Mods(rng, self._mods), chronic=True)
            for key, p in self.bank.chronic
            if rng.random() < p
        }
        return SubjectState(chronic=chronic)

    def _instance(self, status: str) -> _Instance:
        return _Instance(status, _Mods(self.rng, self._mods))

    def _study_state(self, subject: SubjectState, ctx: StudyContext) -> dict[str, _Instance]:
        rng, bank = self.rng, self.bank
        state: dict[str, _Instance] = {}
        r = rng.random()
        n_patterns = 0
        for n, p in _N_PATTERNS:
            if r < p:
                n_patterns = n
                break
            r -= p
        for pattern in rng.choices(bank.patterns, weights=self._pattern_weights, k=n_patterns):
            for key, choices in pattern.facts:
                status = rng.choice(choices)
                if status is not None and key not in state:
                    state[key] = self._instance(status)
        for key, inst in subject.chronic.items():
            if key not in state and rng.random() < 0.8:
                state[key] = inst
        for key, p in bank.devices["portable" if ctx.portable else "upright"]:
            if key not in state and rng.random() < p:
                state[key] = self._instance("present")
        if ctx.line_placement and "central_line" not in state and "picc" not in state:
            state[rng.choice(("central_line", "picc"))] = self._instance("present")
        for key in sorted(subject.devices):
            if key not in state and ctx.has_prior and rng.random() < 0.5:
                state[key] = self._instance("absent")  # removed since the prior study
        positive = {k for k, inst in state.items() if inst.status != "absent"}
        parenchymal = any(bank.findings[k].parenchymal for k in positive)
        for neg in bank.negatable:
            if neg.finding in state or (neg.clear_lungs and parenchymal) or (neg.unless & positive):
                continue
            if rng.random() < neg.p:
                state[neg.finding] = self._instance("absent")
        return state

    # -- sentences -----------------------------------------------------------------------------

    def _np(self, spec: FindingSpec, mods: _Mods) -> tuple[str, bool]:
        fmt, article = self.rng.choice(spec.nps)
        return fmt.format_map(mods), article

    def _fill(self, tpl_fmt: str, fields: tuple[str, ...], spec: FindingSpec, mods: _Mods) -> str:
        values: dict[str, str] = {}
        for name in fields:
            if name in values:
                continue
            if name in ("np", "a_np", "the_np"):
                phrase, article = self._np(spec, mods)
                values["np"] = phrase
                values["a_np"] = _article(phrase) if article else phrase
                values["the_np"] = "the " + phrase
            elif name == "noun":
                values["noun"] = self.rng.choice(spec.nouns).format_map(mods)
            else:
                values[name] = mods[name]
        return _capital(tpl_fmt.format_map(values))

    def _eligible(self, tpl: Template, state: dict[str, _Instance], ctx: StudyContext) -> bool:
        if tpl.prior and not ctx.has_prior:
            return False
        for key, status in tpl.also:
            inst = state.get(key)
            if inst is not None and inst.status != status:
                return False
        return True

    def _single(
        self, key: str, state: dict[str, _Instance], ctx: StudyContext, pending: set[str]
    ) -> _Sentence:
        rng, bank = self.rng, self.bank
        inst = state[key]
        spec = bank.findings[key]
        specific = [t for t in spec.templates[inst.status] if self._eligible(t, state, ctx)]
        generic: list[Template] = []
        if inst.status in spec.generic:
            generic = [t for t in bank.generic[inst.status] if not t.prior or ctx.has_prior]
        if specific and (not generic or rng.random() < 0.55):
            tpl = rng.choice(specific)
        elif generic:
            tpl = rng.choice(generic)
        else:  # a finding without a usable template for this status: say it plainly
            tpl = Template("{np}.", ("np",), (), "plain", False)
        facts = [(key, inst.status)]
        for other, status in tpl.also:
            if other not in state:
                state[other] = self._instance(status)
            pending.discard(other)
            facts.append((other, status))
        text = self._fill(tpl.fmt, tpl.fields, spec, inst.mods)
        if ctx.has_prior and rng.random() < 0.08 and text.startswith(("There ", "The ", "No ")):
            text = rng.choice(bank.comparison_openers) + _lower_start(text)
        return _Sentence(text, facts, tpl.kind)

    def _join(self, items: list[str], joins: Sequence[str]) -> str:
        if len(items) == 1:
            return items[0]
        last = self.rng.choice(joins)
        if len(items) == 2 and last.startswith(","):
            last = last[1:]  # the serial comma only reads right with three or more
        return ", ".join(items[:-1]) + last + items[-1]

    def _combos(
        self, order: list[str], state: dict[str, _Instance], pending: set[str]
    ) -> list[tuple[int, _Sentence]]:
        """Multi-finding sentences (versus, negation lists, scope ends), placed at their first finding."""
        rng, bank = self.rng, self.bank
        out: list[tuple[int, _Sentence]] = []
        pos = {key: i for i, key in enumerate(order)}
        nondevice = [k for k in order if bank.findings[k].region != "devices"]

        leads = [
            k for k in nondevice if k in pending and state[k].status == "present" and bank.findings[k].leads
        ]
        hedged = [
            k
            for k in nondevice
            if k in pending and state[k].status == "uncertain" and bank.findings[k].versus
        ]
        if leads and hedged and rng.random() < 0.6:
            lead = leads[0]
            items = [k for k in hedged if k != lead][: rng.choice((1, 2, 2))]
            if items:
                mods = state[lead].mods
                lead_text = rng.choice(bank.findings[lead].leads).format_map(mods)
                words = [rng.choice(bank.findings[k].versus).format_map(state[k].mods) for k in items]
                text = rng.choice(bank.versus).format(
                    lead=lead_text, items=self._join(words, bank.versus_join)
                )
                facts = [(lead, "present")] + [(k, "uncertain") for k in items]
                out.append((pos[lead], _Sentence(_capital(text), facts, "versus")))
                pending.difference_update(k for k, _ in facts)

        absent = [k for k in nondevice if k in pending and state[k].status == "absent"]
        if len(absent) >= 2 and rng.random() < 0.75:
            n = min(len(absent), rng.choice((2, 3, 3, 4)))
            picked = sorted(rng.sample(absent, n), key=pos.__getitem__)
            words = [rng.choice(bank.findings[k].nouns) for k in picked]
            text = rng.choice(bank.neg_list).format(items=self._join(words, bank.list_join))
            out.append(
                (pos[picked[0]], _Sentence(_capital(text), [(k, "absent") for k in picked], "negation_list"))
            )
            pending.difference_update(picked)

        absent = [k for k in nondevice if k in pending and state[k].status == "absent"]
        present = [k for k in nondevice if k in pending and state[k].status == "present"]
        if absent and present and rng.random() < 0.15:
            neg, pos_key = rng.choice(absent), rng.choice(present)
            spec = bank.findings[pos_key]
            phrase, article = self._np(spec, state[pos_key].mods)
            a_pos = _article(phrase) if article else phrase
            text = rng.choice(bank.scope_end).format(neg=rng.choice(bank.findings[neg].nouns), a_pos=a_pos)
            facts = [(neg, "absent"), (pos_key, "present")]
            out.append((min(pos[neg], pos[pos_key]), _Sentence(_capital(text), facts, "scope_end")))
            pending.difference_update((neg, pos_key))
        return out

    def _render(self, keys: list[str], state: dict[str, _Instance], ctx: StudyContext) -> list[_Sentence]:
        """Sentences asserting each finding in ``keys`` (with its status in ``state``) once."""
        order = sorted(keys, key=lambda k: self._region_order[self.bank.findings[k].region])
        pending = set(order)
        placed = self._combos(order, state, pending)
        for i, key in enumerate(order):
            if key in pending:
                pending.discard(key)
                placed.append((i, self._single(key, state, ctx, pending)))
        placed.sort(key=lambda item: item[0])
        return [s for _, s in placed]

    # -- sections ------------------------------------------------------------------------------

    def _impression_sentences(self, state: dict[str, _Instance], ctx: StudyContext) -> list[_Sentence]:
        rng = self.rng
        findings = self.bank.findings
        acute = [
            k
            for k, inst in state.items()
            if inst.status != "absent" and not inst.chronic and findings[k].region != "devices"
        ]
        if not acute:
            keys = [k for k, inst in state.items() if inst.status == "absent" and rng.random() < 0.15]
            keys += [k for k, inst in state.items() if inst.chronic and rng.random() < 0.15]
            keys += [
                k
                for k, inst in state.items()
                if inst.status == "present" and findings[k].region == "devices" and rng.random() < 0.3
            ]
            sentences = self._render(keys, state, ctx)
            if not any(s.facts for s in sentences) or rng.random() < 0.6:
                sentences.append(_Sentence(rng.choice(self.bank.no_acute), [], "no_acute"))
            return sentences
        keys = [k for k in acute if rng.random() < 0.92] or [rng.choice(acute)]
        for k, inst in state.items():
            if k in keys:
                continue
            region = findings[k].region
            if inst.status == "absent":
                p = 0.2
            elif inst.chronic:
                p = 0.15
            else:
                p = 0.4 if region == "devices" else 0.0
            if rng.random() < p:
                keys.append(k)
        return self._render(keys, state, ctx)

    def _findings_sentences(self, state: dict[str, _Instance], ctx: StudyContext) -> list[_Sentence]:
        rng = self.rng
        keys = [
            k
            for k, inst in state.items()
            if (inst.status != "absent" and not inst.chronic) or rng.random() < 0.88
        ]
        return self._render(keys, state, ctx)

    def _paragraphs(self, sentences: list[_Sentence], sep: str, max_paragraphs: int = 3) -> list[str]:
        if not sentences:
            return []
        n = min(len(sentences), self.rng.randint(1, max_paragraphs))
        cuts = sorted(self.rng.sample(range(1, len(sentences)), n - 1)) if n > 1 else []
        bounds = [0, *cuts, len(sentences)]
        return [sep.join(s.text for s in sentences[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]

    def _block(self, header: str, paragraphs: list[str], *, inline: bool) -> list[str]:
        """A header and its text: on the header's line, or below it after a blank line."""
        if inline and paragraphs:
            lines = _indent(f"{header}:  {paragraphs[0]}")
            for para in paragraphs[1:]:
                lines.append(" ")
                lines.extend(_indent(para))
            return lines
        lines = [f" {header}: " if self.rng.random() < 0.7 else f" {header}:", " "]
        for i, para in enumerate(paragraphs):
            if i:
                lines.append(" ")
            lines.extend(_indent(para))
        return lines

    def _numbered(self, header: str, sentences: list[_Sentence], *, inline: bool) -> list[str]:
        gap = "  " if self.rng.random() < 0.6 else " "
        items = [f"{i}.{gap}{s.text}" for i, s in enumerate(sentences, 1)]
        lines = [f" {header}: ", " "] if not inline else _indent(f"{header}:  {items.pop(0)}")
        for item in items:
            lines.extend(_indent(item))
        return lines

    def _header_sections(self, ctx: StudyContext) -> list[list[str]]:
        """The inline sections before the body: examination, indication, technique, comparison."""
        rng, bank = self.rng, self.bank
        blocks: list[list[str]] = []
        if rng.random() < 0.65:
            blocks.append(_indent(f"{rng.choice(bank.headers['examination'])}:  {ctx.procedure}"))
        if rng.random() < 0.9:
            ind = bank.indication
            reason = rng.choice(ind["reason"])
            text = f"{rng.choice(ind['who'])} with {rng.choice(ind['complaint'])}"
            if reason.startswith("//") or not reason:
                text = f"{text}  {reason}".rstrip()
            else:
                text = f"{text}.  {reason}"
            name = "history" if rng.random() < 0.25 else "indication"
            blocks.append(_indent(f"{rng.choice(bank.headers[name])}:  {text}"))
        if rng.random() < 0.5:
            blocks.append(_indent(f"{rng.choice(bank.headers['technique'])}:  {rng.choice(bank.technique)}"))
        if rng.random() < 0.85:
            comparison = rng.choice(bank.comparison["prior" if ctx.has_prior else "first"])
            blocks.append(_indent(f"{rng.choice(bank.headers['comparison'])}:  {comparison}"))
        return blocks

    def compose(self, subject: SubjectState, ctx: StudyContext) -> ComposedReport:
        """One report for a study of ``subject`` (whose device memory is updated)."""
        rng, bank = self.rng, self.bank
        state = self._study_state(subject, ctx)
        subject.devices = frozenset(
            k
            for k, inst in state.items()
            if inst.status == "present" and bank.findings[k].region == "devices"
        )
        sep = "  " if rng.random() < 0.6 else " "
        kind = rng.choices(("impression", "findings", "neither"), weights=_KIND_WEIGHTS)[0]
        sections: list[tuple[str, list[_Sentence]]] = []
        top: list[str] = [""]  # reports start with an empty line, then the banner

        if kind != "neither" and rng.random() < 0.03:
            sents = (
                self._render([rng.choice(list(state))], state, ctx) if state and rng.random() < 0.5 else []
            )
            sents = sents or [_Sentence(rng.choice(bank.addendum), [], "addendum")]
            sections.append(("addendum", sents))
            top += [ADDENDUM_BANNER, *_indent("ADDENDUM:  " + sep.join(s.text for s in sents)), " ", RULE]
        elif kind != "neither" and rng.random() < 0.03:
            keys = [k for k, inst in state.items() if bank.findings[k].region != "devices"][:2]
            sents = self._render(keys, state, ctx) or [_Sentence(rng.choice(bank.no_acute), [], "no_acute")]
            sections.append(("wet_read", sents))
            top += [
                f" WET READ: {rng.choice(bank.wet_read_times)}",
                *_indent(sep.join(s.text for s in sents), "  "),
                RULE,
            ]
        top.append(BANNER)

        body: list[list[str]] = []
        label_section = kind
        if kind == "neither":
            label_section = "last_paragraph"
            sents = self._findings_sentences(state, ctx)
            if (
                not any(inst.status != "absent" and not inst.chronic for inst in state.values())
                and rng.random() < 0.5
            ):
                sents.append(_Sentence(rng.choice(bank.no_acute), [], "no_acute"))
            opener = _Sentence(rng.choice(bank.openers), [], "opener") if rng.random() < 0.6 else None
            sents = ([opener] if opener else []) + sents
            paragraphs = self._paragraphs(sents, sep) or [rng.choice(bank.openers)]
            sections.append(("last_paragraph", sents))
            headers = self._header_sections(ctx) if rng.random() < 0.7 else []
            if headers:
                body.extend(headers)
            else:
                body.append([" " + rng.choice(bank.titles)])
            body.append(
                [line for i, p in enumerate(paragraphs) for line in ([" "] if i else []) + _indent(p)]
            )
        else:
            body.extend(self._header_sections(ctx))
            with_findings = kind == "findings" or rng.random() < 0.85
            if with_findings:
                sents = self._findings_sentences(state, ctx)
                if not sents:
                    sents = [_Sentence(rng.choice(bank.openers), [], "opener")]
                sections.append(("findings", sents))
                body.append(
                    self._block(
                        rng.choice(bank.headers["findings"]),
                        self._paragraphs(sents, sep, 2),
                        inline=rng.random() < 0.2,
                    )
                )
            if kind == "impression":
                sents = self._impression_sentences(state, ctx)
                sections.append(("impression", sents))
                headers = (
                    self._impression_headers_with_findings if with_findings else self._impression_headers
                )
                header = rng.choice(headers)
                inline = rng.random() < 0.3
                if len(sents) >= 2 and rng.random() < 0.45:
                    body.append(self._numbered(header, sents, inline=inline))
                else:
                    body.append(self._block(header, self._paragraphs(sents, sep, 1), inline=inline))
            r = rng.random()
            if r < 0.05:
                body.append(_indent("NOTIFICATION:  " + rng.choice(bank.notification)))
            elif r < 0.08:
                body.append(_indent("RECOMMENDATION(S):  " + rng.choice(bank.recommendation)))

        lines = top
        for i, block in enumerate(body):
            if i:
                lines.append(" ")
            lines.extend(block)
        text = "\n".join(lines) + "\n"

        mentions: list[Mention] = []
        labeled_facts: list[tuple[str, str]] = []
        for section, sents in sections:
            labeled = section == label_section
            for sent in sents:
                for key, status in sent.facts:
                    mentions.append(
                        Mention(
                            section,
                            key,
                            bank.findings[key].observation,
                            status,
                            sent.kind,
                            sent.text,
                            labeled,
                        )
                    )
                    if labeled:
                        labeled_facts.append((key, status))
        return ComposedReport(
            text=text,
            kind=kind,
            label_section=label_section,
            mentions=tuple(mentions),
            labels=observation_labels(labeled_facts, bank),
        )
