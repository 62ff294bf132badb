"""DAG files: a list of stages whose edges are inferred from dataset ids, validated before running.

A DAG file (``dags/<name>.yaml``)::

    name: labels
    description: ...
    stages: [ingest, parse, extract]
    from_run: false      # true: inputs no stage of the DAG writes are read from the run folder

Validation catches, before anything runs: unknown stages (with "did you mean"), datasets without
a schema, two stages writing one dataset, cycles, and inputs no stage of the DAG produces (with
``from_run: true`` these must instead be complete under ``out``, which the CLI checks before any
work starts).
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.registry import Stage, get_stage
from pipeline.core.schemas import available_schemas, schema_name

REJECTS = "rejects"


@dataclass(frozen=True)
class Dag:
    name: str
    stages: tuple[Stage, ...]  # in a valid run order
    description: str = ""
    from_run: bool = False  # inputs no stage writes come complete from the run folder

    @property
    def produced(self) -> dict[str, str]:
        """Dataset id to the stage producing it."""
        return {d: s.name for s in self.stages for d in s.outputs}


def available_dags() -> list[str]:
    root = resources.files("pipeline.dags")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_dag(name_or_path: str) -> Dag:
    """Load a DAG by name (from the packaged dags/) or from a YAML path, and validate it.

    Raises PipelineError: E_DAG_UNKNOWN, E_DAG_INVALID, or any error of :func:`build_dag`.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text, where = path.read_text(), str(path)
    else:
        known = available_dags()
        if name_or_path not in known:
            raise PipelineError(
                "E_DAG_UNKNOWN", f"unknown DAG {name_or_path!r}." + did_you_mean(name_or_path, known)
            )
        text = (resources.files("pipeline.dags") / f"{name_or_path}.yaml").read_text()
        where = f"dags/{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError("E_DAG_INVALID", f"{where} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineError("E_DAG_INVALID", f"{where} must be a mapping with a non-empty `stages:` list.")
    keys = ["name", "description", "stages", "from_run"]
    unknown_keys = set(raw) - set(keys)
    if unknown_keys:
        key = sorted(unknown_keys)[0]
        raise PipelineError(
            "E_DAG_INVALID",
            f"{where}: unknown key {key!r}." + did_you_mean(key, keys),
        )
    return build_dag(
        str(raw.get("name") or path.stem),
        [str(s) for s in raw["stages"]],
        description=str(raw.get("description") or ""),
        where=where,
        from_run=bool(raw.get("from_run", False)),
    )


def build_dag(
    name: str, stage_names: list[str], *, description: str = "", where: str = "DAG", from_run: bool = False
) -> Dag:
    """Resolve and order stages. ``where`` prefixes error messages. ``from_run``: an input no
    stage of the DAG writes is expected complete in the run folder rather than an error."""
    stages: list[Stage] = []
    for stage_name in stage_names:
        try:
            stages.append(get_stage(stage_name))
        except PipelineError as exc:
            raise PipelineError(exc.code, f"{where}: {exc.message}") from exc
    if len({s.name for s in stages}) != len(stages):
        raise PipelineError("E_DAG_INVALID", f"{where}: a stage is listed twice.")
    known_schemas = available_schemas()
    producers: dict[str, str] = {}
    for stage in stages:
        for dataset in (*stage.inputs, *stage.optional_inputs, *stage.outputs):
            if schema_name(dataset) not in known_schemas:
                raise PipelineError(
                    "E_SCHEMA_MISSING",
                    f"{where}: stage {stage.name!r} uses dataset {dataset!r}, which has no schema in schemas/."
                    + did_you_mean(dataset, known_schemas),
                )
        for dataset in stage.outputs:
            if dataset in producers:
                raise PipelineError(
                    "E_DAG_INVALID",
                    f"{where}: dataset {dataset!r} is written by both {producers[dataset]!r} and {stage.name!r}.",
                )
            producers[dataset] = stage.name
    graph: dict[str, set[str]] = {s.name: set() for s in stages}
    for stage in stages:
        for dataset in stage.inputs:
            if dataset not in producers:
                if from_run:
                    continue
                raise PipelineError(
                    "E_DAG_MISSING_INPUT",
                    f"{where}: stage {stage.name!r} needs {dataset!r}, which no stage of this DAG writes. "
                    f"Add the stage that writes it.",
                )
            graph[stage.name].add(producers[dataset])
        for dataset in stage.optional_inputs:  # ordered after its producer when the DAG has one
            if dataset in producers:
                graph[stage.name].add(producers[dataset])
    sorter = graphlib.TopologicalSorter(graph)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        raise PipelineError(
            "E_DAG_CYCLE", f"{where}: stages form a cycle: {' -> '.join(exc.args[1])}."
        ) from exc
    by_name = {s.name: s for s in stages}
    # Keep the file's order where it is already valid, so runs read top to bottom like the file.
    position = {n: i for i, n in enumerate(stage_names)}
    ordered = _stable_topo(graph, position) if order else []
    return Dag(name, tuple(by_name[n] for n in ordered), description, from_run)


def _stable_topo(graph: dict[str, set[str]], position: dict[str, int]) -> list[str]:
    done: list[str] = []
    pending = set(graph)
    while pending:
        ready = sorted((n for n in pending if graph[n] <= set(done)), key=position.__getitem__)
        done.append(ready[0])
        pending.remove(ready[0])
    return done
