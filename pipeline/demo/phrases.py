"""The demo generator's phrase bank: ``phrases.yaml`` loaded, validated and compiled once.

Every template declares what it asserts (its finding and status, plus ``also`` facts), which is
what lets the generator write the truth next to the text. :func:`load_phrase_bank` raises
:class:`~pipeline.core.errors.PipelineError` (code ``demo_phrases_invalid``) naming the entry at
fault when the file breaks a rule below.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.schemas import chexpert_observations

# The 14 CheXpert observations in the alphabetical order of MIMIC-CXR's label files.
OBSERVATIONS: tuple[str, ...] = tuple(sorted(chexpert_observations()))
STATUSES: tuple[str, ...] = ("present", "absent", "uncertain")
REGIONS: tuple[str, ...] = ("devices", "lungs", "pleura", "heart", "bones", "other")
NOUN_FIELDS = frozenset({"np", "a_np", "the_np", "noun"})
_DEFAULT_KIND = {"present": "plain", "absent": "negation", "uncertain": "hedge"}
_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Template:
    """One sentence template and what it asserts besides its own finding and status."""

    fmt: str
    fields: tuple[str, ...]  # placeholders in order of appearance
    also: tuple[tuple[str, str], ...]
    kind: str  # phrasing family, written to the truth (negation, hedge, normal, temporal ...)
    prior: bool  # only usable in a study that has a prior


@dataclass(frozen=True, slots=True)
class FindingSpec:
    """A fine finding: its CheXpert observation (or None), phrasings and templates per status."""

    key: str
    name: str
    observation: str | None
    region: str
    parenchymal: bool
    nps: tuple[tuple[str, bool], ...]  # (noun phrase template, takes an indefinite article)
    nouns: tuple[str, ...]
    leads: tuple[str, ...]
    versus: tuple[str, ...]
    templates: Mapping[str, tuple[Template, ...]]
    generic: frozenset[str]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A clinical picture: findings with the statuses to draw from (None: left out)."""

    name: str
    weight: float
    facts: tuple[tuple[str, tuple[str | None, ...]], ...]


@dataclass(frozen=True, slots=True)
class Negatable:
    finding: str
    p: float
    unless: frozenset[str]
    clear_lungs: bool


@dataclass(frozen=True)
class PhraseBank:
    """Compiled phrase bank; see ``phrases.yaml`` for the meaning of each part."""

    mods: Mapping[str, tuple[str, ...]]
    findings: Mapping[str, FindingSpec]
    generic: Mapping[str, tuple[Template, ...]]
    neg_list: tuple[str, ...]
    list_join: tuple[str, ...]
    versus: tuple[str, ...]
    versus_join: tuple[str, ...]
    scope_end: tuple[str, ...]
    comparison_openers: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    chronic: tuple[tuple[str, float], ...]
    devices: Mapping[str, tuple[tuple[str, float], ...]]
    negatable: tuple[Negatable, ...]
    no_acute: tuple[str, ...]
    headers: Mapping[str, tuple[str, ...]]
    indication: Mapping[str, tuple[str, ...]]
    technique: tuple[str, ...]
    comparison: Mapping[str, tuple[str, ...]]
    titles: tuple[str, ...]
    openers: tuple[str, ...]
    notification: tuple[str, ...]
    recommendation: tuple[str, ...]
    addendum: tuple[str, ...]
    wet_read_times: tuple[str, ...]


def _fail(where: str, problem: str) -> PipelineError:
    return PipelineError("demo_phrases_invalid", f"phrases.yaml, {where}: {problem}")


def _fields(fmt: str, where: str) -> tuple[str, ...]:
    try:
        return tuple(name for _, name, _, _ in _FORMATTER.parse(fmt) if name is not None)
    except ValueError as exc:
        raise _fail(where, f"bad template {fmt!r} ({exc})") from exc


def _strings(value: Any, where: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "expected a list of strings")
    if not value and not allow_empty:
        raise _fail(where, "expected at least one entry")
    return tuple(value)


def _check_fields(fmt: str, allowed: frozenset[str], where: str) -> tuple[str, ...]:
    fields = _fields(fmt, where)
    for name in fields:
        if name not in allowed:
            raise _fail(where, f"unknown placeholder {{{name}}} in {fmt!r}." + did_you_mean(name, allowed))
    return fields


def _compile_mods(raw: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    mods: dict[str, tuple[str, ...]] = {}
    for name, spec in raw.items():
        if isinstance(spec, dict) and "decimal" in spec:
            lo, hi = (round(float(x) * 10) for x in spec["decimal"])
            mods[name] = tuple(f"{i / 10:.1f}" for i in range(lo, hi + 1))
        elif isinstance(spec, dict) and "integer" in spec:
            lo, hi = (int(x) for x in spec["integer"])
            mods[name] = tuple(str(i) for i in range(lo, hi + 1))
        else:
            mods[name] = _strings(spec, f"mods.{name}")
    return mods


def _compile_template(
    entry: Any, status: str | None, allowed: frozenset[str], finding_keys: frozenset[str], where: str
) -> Template:
    if isinstance(entry, str):
        entry = {"t": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("t"), str):
        raise _fail(where, f"expected a string or a mapping with 't', got {entry!r}")
    unknown = set(entry) - {"t", "also", "kind", "prior"}
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    also_raw = entry.get("also") or {}
    also: list[tuple[str, str]] = []
    for key, st in also_raw.items():
        if key not in finding_keys:
            raise _fail(where, f"'also' names unknown finding {key!r}." + did_you_mean(key, finding_keys))
        if st not in STATUSES:
            raise _fail(where, f"'also' status {st!r} is not one of {STATUSES}")
        also.append((key, st))
    default_kind = _DEFAULT_KIND[status] if status else "plain"
    return Template(
        fmt=entry["t"],
        fields=_check_fields(entry["t"], allowed, where),
        also=tuple(also),
        kind=str(entry.get("kind", default_kind)),
        prior=bool(entry.get("prior", False)),
    )


def _compile_finding(
    key: str, raw: Mapping[str, Any], mods: frozenset[str], keys: frozenset[str]
) -> FindingSpec:
    where = f"findings.{key}"
    allowed = mods | NOUN_FIELDS
    unknown = set(raw) - {
        "name",
        "observation",
        "region",
        "parenchymal",
        "np",
        "noun",
        "lead",
        "versus",
        "generic",
        *STATUSES,
    }
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    observation = raw.get("observation")
    if observation is not None and (observation not in OBSERVATIONS or observation == "No Finding"):
        raise _fail(
            where,
            f"observation {observation!r} is not a CheXpert observation."
            + did_you_mean(str(observation), OBSERVATIONS),
        )
    region = raw.get("region")
    if region not in REGIONS:
        raise _fail(where, f"region {region!r} is not one of {REGIONS}")
    nps = []
    for np_t in _strings(raw.get("np"), f"{where}.np"):
        bare = np_t.lstrip("~")
        _check_fields(bare, mods, f"{where}.np")
        nps.append((bare, not np_t.startswith("~")))
    for field in ("noun", "lead", "versus"):
        for text in raw.get(field) or ():
            _check_fields(text, mods, f"{where}.{field}")
    generic = raw.get("generic", list(STATUSES))
    if not set(generic) <= set(STATUSES):
        raise _fail(where, f"generic {generic!r} must list statuses from {STATUSES}")
    templates = {
        st: tuple(
            _compile_template(e, st, allowed, keys, f"{where}.{st}[{i}]")
            for i, e in enumerate(raw.get(st) or ())
        )
        for st in STATUSES
    }
    for st, tpls in templates.items():
        for tpl in tpls:
            if any(other == key for other, _ in tpl.also):
                raise _fail(where, f"a {st} template lists its own finding in 'also': {tpl.fmt!r}")
    return FindingSpec(
        key=key,
        name=str(raw.get("name", key.replace("_", " "))),
        observation=observation,
        region=region,
        parenchymal=bool(raw.get("parenchymal", False)),
        nps=tuple(nps),
        nouns=_strings(raw.get("noun"), f"{where}.noun"),
        leads=_strings(raw.get("lead", []), f"{where}.lead", allow_empty=True),
        versus=_strings(raw.get("versus", []), f"{where}.versus", allow_empty=True),
        templates=templates,
        generic=frozenset(generic),
    )


def _pairs(raw: Mapping[str, Any], keys: frozenset[str], where: str) -> tuple[tuple[str, float], ...]:
    out = []
    for key, p in raw.items():
        if key not in keys:
            raise _fail(where, f"unknown finding {key!r}." + did_you_mean(key, keys))
        if not 0.0 <= float(p) <= 1.0:
            raise _fail(where, f"probability {p!r} of {key!r} is outside [0, 1]")
        out.append((key, float(p)))
    return tuple(out)


def compile_phrase_bank(raw: Mapping[str, Any]) -> PhraseBank:
    """Validate and compile a parsed ``phrases.yaml``. Raises ``PipelineError`` on any rule broken."""
    if raw.get("version") != 1:
        raise _fail("version", f"expected version 1, got {raw.get('version')!r}")
    mods = _compile_mods(raw["mods"])
    mod_names = frozenset(mods)
    keys = frozenset(raw["findings"])
    findings = {key: _compile_finding(key, spec, mod_names, keys) for key, spec in raw["findings"].items()}
    allowed = mod_names | NOUN_FIELDS
    generic = {
        st: tuple(
            _compile_template(e, st, allowed, keys, f"generic.{st}[{i}]")
            for i, e in enumerate(raw["generic"][st])
        )
        for st in STATUSES
    }
    combos = raw["combos"]
    for name, fields in (
        ("neg_list", {"items"}),
        ("versus", {"lead", "items"}),
        ("scope_end", {"neg", "a_pos"}),
    ):
        for fmt in _strings(combos[name], f"combos.{name}"):
            _check_fields(fmt, frozenset(fields), f"combos.{name}")
    patterns = []
    for name, spec in raw["patterns"].items():
        facts = []
        for key, choices in spec["facts"].items():
            if key not in keys:
                raise _fail(f"patterns.{name}", f"unknown finding {key!r}." + did_you_mean(key, keys))
            if not choices or any(c is not None and c not in STATUSES for c in choices):
                raise _fail(f"patterns.{name}", f"statuses of {key!r} must be drawn from {STATUSES} or null")
            facts.append((key, tuple(choices)))
        patterns.append(Pattern(name=name, weight=float(spec["weight"]), facts=tuple(facts)))
    negatable = []
    for key, spec in raw["negatable"].items():
        if key not in keys:
            raise _fail("negatable", f"unknown finding {key!r}." + did_you_mean(key, keys))
        unless = frozenset(spec.get("unless", ()))
        if not unless <= keys:
            raise _fail(f"negatable.{key}", f"unknown findings in 'unless': {sorted(unless - keys)}")
        negatable.append(Negatable(key, float(spec["p"]), unless, bool(spec.get("clear_lungs", False))))
    headers = {name: _strings(v, f"headers.{name}") for name, v in raw["headers"].items()}
    for name in ("impression", "findings", "indication", "history", "examination", "comparison", "technique"):
        if name not in headers:
            raise _fail("headers", f"missing {name!r}")
    return PhraseBank(
        mods=mods,
        findings=findings,
        generic=generic,
        neg_list=tuple(combos["neg_list"]),
        list_join=_strings(combos["list_join"], "combos.list_join"),
        versus=tuple(combos["versus"]),
        versus_join=_strings(combos["versus_join"], "combos.versus_join"),
        scope_end=tuple(combos["scope_end"]),
        comparison_openers=_strings(raw["comparison_openers"], "comparison_openers"),
        patterns=tuple(patterns),
        chronic=_pairs(raw["chronic"], keys, "chronic"),
        devices={name: _pairs(v, keys, f"devices.{name}") for name, v in raw["devices"].items()},
        negatable=tuple(negatable),
        no_acute=_strings(raw["no_acute"], "no_acute"),
        headers=headers,
        indication={name: _strings(v, f"indication.{name}") for name, v in raw["indication"].items()},
        technique=_strings(raw["technique"], "technique"),
        comparison={name: _strings(v, f"comparison.{name}") for name, v in raw["comparison"].items()},
        titles=_strings(raw["titles"], "titles"),
        openers=_strings(raw["openers"], "openers"),
        notification=_strings(raw["notification"], "notification"),
        recommendation=_strings(raw["recommendation"], "recommendation"),
        addendum=_strings(raw["addendum"], "addendum"),
        wet_read_times=_strings(raw["wet_read_times"], "wet_read_times"),
    )


@functools.lru_cache(maxsize=4)
def load_phrase_bank(path: str | None = None) -> PhraseBank:
    """The phrase bank shipped with the package (or the YAML file at ``path``), compiled once."""
    if path is None:
        text = resources.files("pipeline.demo").joinpath("phrases.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    raw = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, C-accelerated when available
    if not isinstance(raw, dict):
        raise _fail("top level", "expected a mapping")
    try:
        return compile_phrase_bank(raw)
    except (KeyError, TypeError) as exc:
        raise _fail("structure", f"missing or malformed entry ({exc!r})") from exc
