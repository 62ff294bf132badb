"""Compose the run's config with Hydra and turn it into typed, frozen dataclasses.

``compose_run(["stage=parse", "dataset=mimic_cxr", "dataset.root=/data/mimic"])`` gives a
:class:`RunConfig`. Every stage's section is typed by the stage's own dataclass (registered in
Hydra's ConfigStore as ``_typed``), so a misspelt key or a wrong type fails at once, with a
"did you mean" for keys and config-group options.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.registry import all_stages
from pipeline.core.runner import ClusterConfig
from pipeline.ingest.config import DatasetConfig

GROUPS = ("dataset", "cluster", "profile")


@dataclass(frozen=True)
class RunConfig:
    """The whole run: what to run, on what, where, and each stage's config."""

    dag: str | None
    stage: str | None
    out: str
    force: bool
    log_level: str
    progress: bool
    profile: str
    dataset: DatasetConfig
    cluster: ClusterConfig
    stages: dict[str, Any]  # stage name -> its frozen config dataclass

    def stage_config(self, name: str) -> Any:
        return self.stages[name]


def _typed_node(config_type: type, skip: tuple[str, ...] = ()) -> DictConfig:
    """A typed, writable OmegaConf node for a (frozen) config dataclass, without ``skip`` fields."""
    if any(f.name in skip for f in fields(config_type)):
        hints = typing.get_type_hints(config_type)
        kept = [
            (f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory))
            for f in fields(config_type)
            if f.name not in skip
        ]
        config_type = dataclasses.make_dataclass(config_type.__name__, kept)
    node = OmegaConf.structured(config_type)
    _unlock(node)
    return node


def _unlock(node: DictConfig) -> None:
    """Make a structured node and its nested nodes writable: OmegaConf marks every frozen
    dataclass read-only, nested ones included, and overrides must reach ``a.b.c``."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _unlock(child)


def _register() -> None:
    stages = all_stages()
    typed = {
        "dataset": _typed_node(DatasetConfig),
        "cluster": _typed_node(ClusterConfig),
        "stages": {
            name: _typed_node(stage.config, skip=("dataset",)) for name, stage in sorted(stages.items())
        },
    }
    ConfigStore.instance().store(name="_typed", node=OmegaConf.create(typed))


def group_options(group: str) -> list[str]:
    root = resources.files("pipeline.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _walk_keys(cfg: DictConfig, path: list[str]) -> None:
    """Raise E_CONFIG_KEY with suggestions when ``path`` is not a key of ``cfg``."""
    node: Any = cfg
    for depth, part in enumerate(path):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(path[:depth]) or "the top level"
            choices = list(node.keys()) if isinstance(node, DictConfig) else []
            raise PipelineError(
                "E_CONFIG_KEY",
                f"unknown key {'.'.join(path)!r}: {where} has no {part!r}."
                + did_you_mean(str(part), map(str, choices)),
            )
        node = node[part]


def _check_overrides(overrides: list[str], base: DictConfig) -> None:
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as exc:
        raise PipelineError("E_CONFIG_SYNTAX", f"cannot parse overrides: {exc}") from exc
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_add() or ov.is_delete():
            continue
        if key in GROUPS:
            options = group_options(key)
            value = ov.value()
            if not isinstance(value, str) or value not in options:
                raise PipelineError(
                    "E_CONFIG_VALUE", f"unknown {key} {value!r}." + did_you_mean(str(value), options)
                )
            continue
        _walk_keys(base, key.split("."))


def _to_dataclass(config_type: type, values: dict[str, Any]) -> Any:
    """Build a frozen dataclass from plain values, lists becoming tuples where the type says so."""
    hints = typing.get_type_hints(config_type)
    kwargs = {}
    for f in fields(config_type):
        if f.name not in values:
            continue
        value = values[f.name]
        hint = hints[f.name]
        if is_dataclass(hint) and isinstance(value, dict):
            value = _to_dataclass(hint, value)
        elif isinstance(value, list) and _is_tuple(hint):
            value = tuple(value)
        kwargs[f.name] = value
    return config_type(**kwargs)


def _is_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return False


_EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}
_NOT_CONVERTED = re.compile(
    r"Value '(.*)' of type '\w+' could not be converted to (\w+)\s+full_key: (\S+)", re.S
)


def _value_error(exc: BaseException) -> str:
    """The message of a failed override: the key, what it expects and what it got, when OmegaConf
    says (its own wording is "Error merging override ..." with the reason in the cause)."""
    for err in (exc, exc.__cause__, exc.__context__):
        match = _NOT_CONVERTED.search(str(err or ""))
        if match:
            value, kind, key = match.groups()
            expected = _EXPECTED.get(kind, kind.lower())
            return f"{key} expects {expected}, got {value!r}."
    return str(exc).strip().splitlines()[0]


def compose_run(overrides: list[str]) -> RunConfig:
    """Compose ``pipeline/conf/config.yaml`` with ``overrides`` (Hydra ``key=value`` syntax).

    Raises PipelineError(E_CONFIG_*) for unknown keys or group options, bad syntax, wrong types
    and missing mandatory values (``???``), naming the fix.
    """
    _register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pipeline.conf", version_base=None):
        base = compose(config_name="config")
        _check_overrides(overrides, base)
        try:
            cfg = compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            raise PipelineError("E_CONFIG_VALUE", _value_error(exc)) from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise PipelineError(
            "E_CONFIG_MISSING",
            f"dataset={cfg.dataset.name} needs {', '.join(missing)}: add "
            + " ".join(f"{k}=..." for k in missing)
            + " to the command.",
        )
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    dataset = _to_dataclass(DatasetConfig, plain["dataset"])
    stages: dict[str, Any] = {}
    for name, stage in all_stages().items():
        values = dict(plain["stages"].get(name, {}))
        if any(f.name == "dataset" for f in fields(stage.config)):
            values["dataset"] = dataclasses.asdict(dataset)
        try:
            stages[name] = _to_dataclass(stage.config, values)
        except (TypeError, ValueError) as exc:
            raise PipelineError("E_CONFIG_VALUE", f"stages.{name}: {exc}") from exc
    for key in ("force", "progress"):
        if not isinstance(plain.get(key, False), bool):
            raise PipelineError("E_CONFIG_VALUE", f"{key} expects true or false, got {plain[key]!r}.")
    profile = _chosen_profile(overrides)
    return RunConfig(
        dag=plain.get("dag"),
        stage=plain.get("stage"),
        out=str(plain.get("out") or f"runs/{dataset.name}"),
        force=bool(plain.get("force")),
        log_level=str(plain.get("log_level") or "WARNING"),
        progress=bool(plain.get("progress", True)),
        profile=profile,
        dataset=dataset,
        cluster=_to_dataclass(ClusterConfig, plain["cluster"]),
        stages=stages,
    )


def _chosen_profile(overrides: list[str]) -> str:
    for item in overrides:
        if item.startswith("profile="):
            return item.split("=", 1)[1]
    return "auto"
