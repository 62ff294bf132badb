"""The radiology lexicon: YAML data files in ``pipeline/text/lexicon/``, loaded and validated.

The lexicon is data (house style): findings with their CheXpert observation, anchors with their
qualifiers (normal phrasings), anatomy, laterality, modifiers, section headers, and the negation and
uncertainty termsets handed to negspacy. :func:`load_lexicon` checks every file and raises
``PipelineError("E_LEXICON_INVALID", ...)`` naming the file, the entry and the fix; nothing is
compiled from a lexicon that did not validate. Term syntax is described in the folder's README.md.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.schemas import chexpert_observations

# The 14 CheXpert observations in the order of schemas/labels.yaml.
OBSERVATIONS: tuple[str, ...] = chexpert_observations()
SUPPORT_DEVICES = "Support Devices"
NO_FINDING = "No Finding"
# A finding maps to one of these; No Finding is computed, never mentioned.
FINDING_OBSERVATIONS: frozenset[str] = frozenset(OBSERVATIONS) - {NO_FINDING}
STATUSES: tuple[str, ...] = ("present", "uncertain", "absent")
FINDING_KINDS: tuple[str, ...] = ("finding", "statement")

FILES: tuple[str, ...] = (
    "findings.yaml",
    "anchors.yaml",
    "anatomy.yaml",
    "modifiers.yaml",
    "negation.yaml",
    "uncertainty.yaml",
    "headers.yaml",
)
MODIFIER_KINDS: tuple[str, ...] = ("severity", "size", "temporal")
LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral")
TERMSET_KEYS: tuple[str, ...] = ("pseudo", "preceding", "following", "termination")
PROBABLE_KEYS: tuple[str, ...] = ("probable_preceding", "probable_following")
ALTERNATIVE_KEY = "alternative"
REMOVAL_KEYS: tuple[str, ...] = ("removal_preceding", "removal_following")

_ID = re.compile(r"[a-z][a-z0-9_]*")
# A term token: lower-case word characters and the punctuation radiology abbreviations use.
_TOKEN = re.compile(r"[a-z0-9?;:,'./&+_-]+\*?")
_BRACES = re.compile(r"\{([^{}]*)\}")


class LexiconError(PipelineError):
    """A lexicon file is missing or malformed (code ``E_LEXICON_INVALID``)."""

    def __init__(self, where: str, problem: str, fix: str = "") -> None:
        super().__init__("E_LEXICON_INVALID", f"{where}: {problem}" + (f". {fix}" if fix else ""))


@dataclass(frozen=True)
class Finding:
    """One fine finding: its id, CheXpert observation (or None) and surface terms."""

    id: str
    observation: str | None
    terms: tuple[str, ...]
    kind: str = "finding"
    anatomy: str | None = None
    blocks_no_finding: bool = True
    refine: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reading:
    """How an anchor's qualifier turns into a mention of ``finding``."""

    finding: str
    when: Mapping[str, str]
    default: str = "drop"  # "drop" or "present"
    counts_toward_label: bool = True


@dataclass(frozen=True)
class Anchor:
    id: str
    terms: tuple[str, ...]
    readings: tuple[Reading, ...]


@dataclass(frozen=True)
class AnatomyTerm:
    id: str
    terms: tuple[str, ...]
    laterality: str | None = None


@dataclass(frozen=True)
class Termset:
    """A negspacy termset plus the prefix of the rule ids it produces.

    ``probable_preceding``/``probable_following`` (uncertainty only) are cues that lean towards
    the finding: they join the preceding/following lists given to negspacy, and their rule ids
    take ``probable_prefix`` instead of ``rule_prefix``.

    ``alternative`` (uncertainty only) are the conjunctions of a differential ("atelectasis versus
    pneumonia", "effusion or pneumothorax"): they go to negspacy as both preceding and following
    cues, but hedge only the finding next to them, and only when another finding stands on their
    other side (see :class:`pipeline.text.negation.CueNegex`).

    ``removal_preceding``/``removal_following`` (negation only) deny a device and nothing else:
    in "interval removal of the chest tube, with a small residual pneumothorax" the tube is gone,
    the pneumothorax is not. They join the preceding/following lists given to negspacy.
    """

    name: str
    rule_prefix: str
    pseudo: tuple[str, ...]
    preceding: tuple[str, ...]
    following: tuple[str, ...]
    termination: tuple[str, ...]
    probable_prefix: str | None = None
    probable_preceding: tuple[str, ...] = ()
    probable_following: tuple[str, ...] = ()
    alternative: tuple[str, ...] = ()
    removal_preceding: tuple[str, ...] = ()
    removal_following: tuple[str, ...] = ()

    def negspacy(self) -> dict[str, list[str]]:
        """The termset in the shape ``negspacy.negation.Negex(neg_termset=...)`` expects."""
        return {
            "pseudo_negations": list(self.pseudo),
            "preceding_negations": list(
                dict.fromkeys(
                    self.preceding + self.probable_preceding + self.alternative + self.removal_preceding
                )
            ),
            "following_negations": list(
                dict.fromkeys(
                    self.following + self.probable_following + self.alternative + self.removal_following
                )
            ),
            "termination": list(self.termination),
        }


@dataclass(frozen=True)
class Lexicon:
    """Everything the text engine compiles, validated."""

    findings: Mapping[str, Finding]
    anchors: Mapping[str, Anchor]
    qualifiers: Mapping[str, tuple[str, ...]]
    anatomy: tuple[AnatomyTerm, ...]
    laterality: Mapping[str, tuple[str, ...]]
    modifiers: Mapping[str, Mapping[str, tuple[str, ...]]]
    negation: Termset
    uncertainty: Termset
    headers: tuple[str, ...]
    source: str

    def observation_of(self, finding: str) -> str | None:
        return self.findings[finding].observation


def expand(term: str) -> list[str]:
    """Expand ``{a,b,}`` alternatives (cartesian product) and normalise spaces.

    >>> expand("{left,right} {effusion,}")
    ['left effusion', 'left', 'right effusion', 'right']
    """
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACES.finditer(term):
        parts.append([term[pos : m.start()]])
        parts.append(m.group(1).split(","))
        pos = m.end()
    parts.append([term[pos:]])
    out: list[str] = []
    for combo in itertools.product(*parts):
        text = " ".join("".join(combo).split())
        if text and text not in out:
            out.append(text)
    return out


def default_lexicon_dir() -> Path:
    return Path(str(resources.files("pipeline.text") / "lexicon"))


def load_lexicon(directory: str | Path | None = None) -> Lexicon:
    """Load and validate the lexicon in ``directory`` (default: the bundled one).

    Cached per resolved folder. Raises :class:`LexiconError` (``E_LEXICON_INVALID``) for a missing
    file, a YAML syntax error or any entry that breaks the format.
    """
    path = Path(directory) if directory is not None else default_lexicon_dir()
    return _load(str(path.resolve()))


@functools.cache
def _load(directory: str) -> Lexicon:
    root = Path(directory)
    if not root.is_dir():
        raise LexiconError(
            directory, "lexicon folder not found", "Pass an existing folder or None for the bundled lexicon"
        )
    raw = {name: _read_yaml(root / name) for name in FILES}
    findings = _findings(raw["findings.yaml"], "findings.yaml")
    qualifiers = _groups(raw["anchors.yaml"].get("qualifiers"), "anchors.yaml: qualifiers")
    anchors = _anchors(raw["anchors.yaml"], "anchors.yaml", findings, qualifiers)
    anatomy, laterality = _anatomy(raw["anatomy.yaml"], "anatomy.yaml")
    for f in findings.values():
        known = {a.id for a in anatomy}
        for anat in ([f.anatomy] if f.anatomy else []) + list(f.refine):
            if anat not in known:
                raise LexiconError(
                    f"findings.yaml: finding {f.id!r}",
                    f"unknown anatomy {anat!r}." + did_you_mean(anat, known),
                    "Use an id from anatomy.yaml",
                )
    modifiers = {}
    for kind in MODIFIER_KINDS:
        modifiers[kind] = _groups(raw["modifiers.yaml"].get(kind), f"modifiers.yaml: {kind}")
    extra = set(raw["modifiers.yaml"]) - set(MODIFIER_KINDS) - {"version"}
    if extra:
        raise LexiconError(
            "modifiers.yaml", f"unknown sections {sorted(extra)}", f"Use {list(MODIFIER_KINDS)}"
        )
    negation = _termset(raw["negation.yaml"], "negation.yaml")
    uncertainty = _termset(raw["uncertainty.yaml"], "uncertainty.yaml")
    if negation.rule_prefix in (uncertainty.rule_prefix, uncertainty.probable_prefix):
        raise LexiconError("uncertainty.yaml", "rule prefixes must differ from negation.yaml's")
    if negation.probable_prefix is not None:
        raise LexiconError("negation.yaml", "probable cues belong in uncertainty.yaml")
    if negation.alternative:
        raise LexiconError("negation.yaml", "alternative cues (versus, or) belong in uncertainty.yaml")
    headers = tuple(_terms(raw["headers.yaml"].get("headers"), "headers.yaml: headers"))
    lexicon = Lexicon(
        findings=findings,
        anchors=anchors,
        qualifiers=qualifiers,
        anatomy=anatomy,
        laterality=laterality,
        modifiers=modifiers,
        negation=negation,
        uncertainty=uncertainty,
        headers=headers,
        source=directory,
    )
    _check_term_clashes(lexicon)
    return lexicon


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LexiconError(str(path), "file missing", f"A lexicon folder holds {', '.join(FILES)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LexiconError(path.name, f"not valid YAML ({exc})".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise LexiconError(
            path.name, "the top level must be a mapping", "See pipeline/text/lexicon/README.md"
        )
    if data.get("version") != 1:
        raise LexiconError(path.name, f"unsupported version {data.get('version')!r}", "Set `version: 1`")
    return data


def _check_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise LexiconError(where, f"id {value!r} is not snake_case", "Use lower-case letters, digits and _")
    return value


def _terms(values: Any, where: str) -> list[str]:
    """Validate and expand a list of terms."""
    if not isinstance(values, list) or not values:
        raise LexiconError(where, "expected a non-empty list of terms")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise LexiconError(where, f"term {value!r} is not a non-empty string")
        if value != value.lower():
            raise LexiconError(
                where, f"term {value!r} has capitals", "Write terms in lower case (matching ignores case)"
            )
        if value.count("{") != value.count("}"):
            raise LexiconError(where, f"term {value!r} has unbalanced braces")
        for term in expand(value):
            for token in term.split(" "):
                if not _TOKEN.fullmatch(token):
                    raise LexiconError(
                        where, f"term {term!r}: token {token!r} has characters outside [a-z0-9?;:,'./&+_-]"
                    )
                if token.endswith("*") and len(token) < 4:
                    raise LexiconError(where, f"term {term!r}: prefix {token!r} is shorter than 3 characters")
            if "*" in term[:-1]:
                raise LexiconError(where, f"term {term!r}: only the last token may be a prefix (end in *)")
            if term not in out:
                out.append(term)
    return out


def _known_keys(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(entry) - allowed
    if extra:
        key = sorted(extra)[0]
        raise LexiconError(where, f"unknown key {key!r}." + did_you_mean(key, allowed))


def _findings(data: Mapping[str, Any], where: str) -> dict[str, Finding]:
    entries = data.get("findings")
    if not isinstance(entries, list) or not entries:
        raise LexiconError(where, "expected a non-empty list under `findings`")
    out: dict[str, Finding] = {}
    allowed = {"id", "observation", "terms", "kind", "anatomy", "blocks_no_finding", "refine", "description"}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LexiconError(
                f"{where}: findings[{i}]", "each finding is a mapping with id, observation and terms"
            )
        fid = _check_id(entry.get("id"), f"{where}: findings[{i}]")
        here = f"{where}: finding {fid!r}"
        _known_keys(entry, allowed, here)
        if fid in out:
            raise LexiconError(here, "duplicate id", "Merge the two entries")
        if "observation" not in entry:
            raise LexiconError(here, "missing `observation`", "Give a CheXpert observation or null")
        obs = entry["observation"]
        if obs is not None and obs not in FINDING_OBSERVATIONS:
            raise LexiconError(
                here, f"unknown observation {obs!r}." + did_you_mean(str(obs), FINDING_OBSERVATIONS)
            )
        kind = entry.get("kind", "finding")
        if kind not in FINDING_KINDS:
            raise LexiconError(here, f"unknown kind {kind!r}", f"Use one of {list(FINDING_KINDS)}")
        blocks = entry.get("blocks_no_finding", kind == "finding" and obs != SUPPORT_DEVICES)
        if not isinstance(blocks, bool):
            raise LexiconError(here, "`blocks_no_finding` must be true or false")
        refine = entry.get("refine") or {}
        if not isinstance(refine, dict):
            raise LexiconError(here, "`refine` must map anatomy ids to finding ids")
        out[fid] = Finding(
            id=fid,
            observation=obs,
            terms=tuple(_terms(entry.get("terms"), here)),
            kind=kind,
            anatomy=entry.get("anatomy"),
            blocks_no_finding=blocks,
            refine=dict(refine),
        )
    for f in out.values():
        for target in f.refine.values():
            if target not in out:
                raise LexiconError(
                    f"{where}: finding {f.id!r}",
                    f"refine target {target!r} is not a finding." + did_you_mean(target, out),
                )
    return out


def _groups(data: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict) or not data:
        raise LexiconError(where, "expected a mapping of group name -> list of terms")
    return {_check_id(k, where): tuple(_terms(v, f"{where}.{k}")) for k, v in data.items()}


def _anchors(
    data: Mapping[str, Any], where: str, findings: Mapping[str, Finding], qualifiers: Mapping[str, Any]
) -> dict[str, Anchor]:
    entries = data.get("anchors")
    if not isinstance(entries, list) or not entries:
        raise LexiconError(where, "expected a non-empty list under `anchors`")
    out: dict[str, Anchor] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LexiconError(
                f"{where}: anchors[{i}]", "each anchor is a mapping with id, terms and readings"
            )
        aid = _check_id(entry.get("id"), f"{where}: anchors[{i}]")
        here = f"{where}: anchor {aid!r}"
        _known_keys(entry, {"id", "terms", "readings", "description"}, here)
        if aid in out:
            raise LexiconError(here, "duplicate id")
        readings = []
        raw_readings = entry.get("readings")
        if not isinstance(raw_readings, list) or not raw_readings:
            raise LexiconError(here, "expected a non-empty list under `readings`")
        for reading in raw_readings:
            if not isinstance(reading, dict):
                raise LexiconError(here, "each reading is a mapping with finding and when")
            _known_keys(reading, {"finding", "when", "default", "counts_toward_label"}, here)
            fid = reading.get("finding")
            if fid not in findings:
                raise LexiconError(
                    here, f"reading names unknown finding {fid!r}." + did_you_mean(str(fid), findings)
                )
            when = reading.get("when") or {}
            if not isinstance(when, dict):
                raise LexiconError(here, "`when` maps qualifier groups to statuses")
            for group, status in when.items():
                if group not in qualifiers:
                    raise LexiconError(
                        here, f"unknown qualifier group {group!r}." + did_you_mean(str(group), qualifiers)
                    )
                if status not in STATUSES:
                    raise LexiconError(
                        here, f"status {status!r} for {group!r} is not one of {list(STATUSES)}"
                    )
            default = reading.get("default", "drop")
            if default not in ("drop", "present"):
                raise LexiconError(here, f"default {default!r} must be drop or present")
            counts = reading.get("counts_toward_label", True)
            if not isinstance(counts, bool):
                raise LexiconError(here, "`counts_toward_label` must be true or false")
            readings.append(
                Reading(finding=fid, when=dict(when), default=default, counts_toward_label=counts)
            )
        out[aid] = Anchor(id=aid, terms=tuple(_terms(entry.get("terms"), here)), readings=tuple(readings))
    return out


def _anatomy(
    data: Mapping[str, Any], where: str
) -> tuple[tuple[AnatomyTerm, ...], dict[str, tuple[str, ...]]]:
    entries = data.get("anatomy")
    if not isinstance(entries, list) or not entries:
        raise LexiconError(where, "expected a non-empty list under `anatomy`")
    out: list[AnatomyTerm] = []
    seen: set[tuple[str, str | None]] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LexiconError(f"{where}: anatomy[{i}]", "each entry is a mapping with id and terms")
        aid = _check_id(entry.get("id"), f"{where}: anatomy[{i}]")
        here = f"{where}: anatomy {aid!r}"
        _known_keys(entry, {"id", "terms", "laterality"}, here)
        lat = entry.get("laterality")
        if lat is not None and lat not in LATERALITIES:
            raise LexiconError(here, f"laterality {lat!r} is not one of {list(LATERALITIES)}")
        if (aid, lat) in seen:
            raise LexiconError(here, "duplicate entry", "Merge entries with the same id and laterality")
        seen.add((aid, lat))
        out.append(AnatomyTerm(id=aid, terms=tuple(_terms(entry.get("terms"), here)), laterality=lat))
    laterality = _groups(data.get("laterality"), f"{where}: laterality")
    bad = set(laterality) - set(LATERALITIES)
    if bad:
        raise LexiconError(
            f"{where}: laterality", f"unknown values {sorted(bad)}", f"Use {list(LATERALITIES)}"
        )
    return tuple(out), laterality


def _termset(data: Mapping[str, Any], where: str) -> Termset:
    _known_keys(
        data,
        {
            "version",
            "name",
            "rule_prefix",
            "probable_prefix",
            ALTERNATIVE_KEY,
            *TERMSET_KEYS,
            *PROBABLE_KEYS,
            *REMOVAL_KEYS,
        },
        where,
    )
    prefix = _check_id(data.get("rule_prefix"), f"{where}: rule_prefix")
    lists = {key: tuple(_terms(data.get(key), f"{where}: {key}")) for key in TERMSET_KEYS}
    probable = {key: tuple(_terms(data[key], f"{where}: {key}")) for key in PROBABLE_KEYS if key in data}
    removal = {key: tuple(_terms(data[key], f"{where}: {key}")) for key in REMOVAL_KEYS if key in data}
    probable_prefix = data.get("probable_prefix")
    if probable and probable_prefix is None:
        raise LexiconError(where, "probable cues need a `probable_prefix` for their rule ids")
    if probable_prefix is not None:
        _check_id(probable_prefix, f"{where}: probable_prefix")
        if probable_prefix == prefix:
            raise LexiconError(where, "probable_prefix must differ from rule_prefix")
    return Termset(
        name=str(data.get("name", where)),
        rule_prefix=prefix,
        probable_prefix=probable_prefix,
        alternative=tuple(_terms(data[ALTERNATIVE_KEY], f"{where}: {ALTERNATIVE_KEY}"))
        if ALTERNATIVE_KEY in data
        else (),
        **lists,
        **probable,
        **removal,
    )


def _check_term_clashes(lexicon: Lexicon) -> None:
    """One surface term must name one finding or anchor, or matching would be arbitrary."""
    owner: dict[str, str] = {}
    named = [(f"finding {f.id!r}", f.terms) for f in lexicon.findings.values()]
    named += [(f"anchor {a.id!r}", a.terms) for a in lexicon.anchors.values()]
    for name, terms in named:
        for term in terms:
            if term in owner and owner[term] != name:
                raise LexiconError(
                    "findings.yaml/anchors.yaml",
                    f"term {term!r} belongs to both {owner[term]} and {name}",
                    "Keep it in one entry",
                )
            owner[term] = name
