"""The stage registry: versioned stage names, their datasets and their typed config.

Two kinds of stage:

* ``map`` stages are pure functions over one partition: ``fn(tables, *, config) -> tables``.
  ``tables`` maps each input dataset id to that partition's Arrow table; the result maps output
  dataset ids (and optionally ``"rejects"``) to tables. Partitions of all datasets line up, since
  they all descend from one ingest partition.
* ``source`` stages read a dump: ``plan(config, ctx)`` runs on the client and returns picklable
  part specs (cheap: file lists, row ranges); ``read(spec, config)`` runs on a worker and returns a
  :class:`PartResult`. Each part has its own fingerprint (from the spec's ``part_key()``), and a
  map stage's part follows the fingerprints of its input parts, so an edit reruns only the parts
  that hold it (corpus stages follow the whole dataset).
* ``corpus`` stages need the whole corpus (top-k neighbours, corpus graphs): ``fn(ctx, *, config)``
  runs on the client, schedules its own Dask work through ``ctx`` and writes through ``ctx``.

Stages are found by name only. Built-in stage modules are listed in :data:`STAGE_MODULES` and
imported on first lookup (on the client and on every worker). Extra stage modules (plugins, test
stages) are named in the environment variable ``CLIP2CLINIC_STAGE_MODULES`` (comma-separated),
which worker processes inherit; config never names code.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from pipeline.core.errors import PipelineError, did_you_mean

STAGE_MODULES: tuple[str, ...] = (
    "pipeline.ingest.stage",
    "pipeline.text.stage",
    "pipeline.evaluate.stage",
    "pipeline.graph.stage",
    "pipeline.similarity.stage",
    "pipeline.hardneg.stage",
    "pipeline.images.stage",
    "pipeline.shards.stage",
    "pipeline.train.stage",
    "pipeline.train.evaluate_stage",
)

Tables = Mapping[str, pa.Table]

# Config field metadata key: the field names a local file or folder whose bytes join the stage's
# fingerprint (``field(default=None, metadata={CONTENT: True})``; or a function of the value that
# lists the files to hash).
CONTENT = "content"


# Chosen part sizes: enough parts to keep every worker busy to the end (several each), each big
# enough that a part's fixed costs (scheduling, Parquet open and commit, marker) stay small.
PARTS_PER_WORKER = 4
AUTO_PART_MIN = 100
AUTO_PART_MAX = 2000


def auto_part_size(n_rows: int, workers: int) -> int:
    """Rows per part for ``n_rows`` rows on ``workers`` worker threads (no part size configured)."""
    want = -(-max(n_rows, 1) // (PARTS_PER_WORKER * max(workers, 1)))
    return min(AUTO_PART_MAX, max(AUTO_PART_MIN, want))


@dataclass(frozen=True)
class PlanContext:
    """What a source stage's ``plan`` may use: a private folder for staging files, the part size.

    ``part_size`` is the configured size, or None to choose one from the input size and the
    cluster's ``workers``: adapters call :meth:`part_size_for` once they know (or estimate) their
    row count.
    """

    staging_dir: str
    part_size: int | None = None
    workers: int = 2

    def part_size_for(self, n_rows: int | Callable[[], int]) -> int:
        """The part size; ``n_rows`` may be a function, called only when the size is not set."""
        if self.part_size is not None:
            return self.part_size
        return auto_part_size(n_rows() if callable(n_rows) else n_rows, self.workers)


@dataclass
class PartResult:
    """What a source part (or a corpus stage's unit of work) produced.

    ``rows_in`` counts the records seen per output dataset, so the runner can check
    ``rows_in == rows_out + rejected`` for each.
    """

    tables: dict[str, pa.Table]
    rows_in: dict[str, int] = field(default_factory=dict)
    # counts a user should see in the manifest, summed over parts (rows read as Windows-1252 ...)
    notes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    kind: Literal["map", "source", "corpus"]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: type
    fn: Callable[..., Any] | None = None
    plan: Callable[..., list[Any]] | None = None
    read: Callable[..., PartResult] | None = None
    # source stages: ``stamp(config)`` is a cheap digest of the whole input (a file's bytes), or
    # None when only a listing can tell (a tree); an unchanged stamp skips the plan altogether.
    stamp: Callable[..., str | None] | None = None
    key: str = "report_id"
    # the output(s) whose ``key`` values, with the rejects, must cover the primary input's
    primary_output: str | tuple[str, ...] | None = None
    optional_outputs: tuple[str, ...] = ()
    description: str = ""
    # Read when present (their fingerprints then join this stage's); a DAG that also produces
    # one runs its producer first. Absent, the stage runs without it.
    optional_inputs: tuple[str, ...] = ()
    # Each part writes only the outputs it returns (a training shard belongs to one split's
    # folder), instead of an empty file in every other output.
    sparse_outputs: bool = False
    # Rows per Parquet row group of the outputs (None: one per part); large binary columns
    # (PNGs) read back in pieces instead of hundreds of MB at once.
    row_group_size: int | None = None

    @property
    def id(self) -> str:
        return f"{self.name}.v{self.version}"

    @property
    def module(self) -> str:
        target = self.fn or self.plan
        return target.__module__ if target else ""


_REGISTRY: dict[str, Stage] = {}
_LOADED = False


def _check_config(config: type) -> None:
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{config!r} must be a frozen dataclass")


def _add(stage: Stage) -> None:
    old = _REGISTRY.get(stage.name)
    if old is not None and old.module != stage.module:
        raise PipelineError(
            "E_STAGE_DUPLICATE", f"stage {stage.name!r} is registered twice ({old.module}, {stage.module})"
        )
    _REGISTRY[stage.name] = stage


def map_stage(
    name: str,
    *,
    version: int,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    config: type,
    primary_output: str | tuple[str, ...] | None = None,
    key: str = "report_id",
    optional_outputs: tuple[str, ...] = (),
    optional_inputs: tuple[str, ...] = (),
    row_group_size: int | None = None,
) -> Callable[[Callable[..., dict[str, pa.Table]]], Callable[..., dict[str, pa.Table]]]:
    """Register a partition-wise stage.

    ``inputs[0]`` is the primary input: each of its rows must end up either in
    ``primary_output`` (by ``key``, default the first output; a tuple of outputs when rows of
    different kinds go to different datasets) or in ``rejects``.
    ``optional_outputs`` may be absent from the function's result on some runs (the runner writes
    them empty). ``optional_inputs`` are passed in ``tables`` only when complete in the run.
    ``row_group_size`` caps the rows per Parquet row group of the outputs.
    """
    _check_config(config)

    def wrap(fn: Callable[..., dict[str, pa.Table]]) -> Callable[..., dict[str, pa.Table]]:
        _add(
            Stage(
                name,
                version,
                "map",
                inputs,
                outputs,
                config,
                fn=fn,
                key=key,
                primary_output=primary_output or outputs[0],
                optional_outputs=optional_outputs,
                description=(fn.__doc__ or "").strip().split("\n")[0],
                optional_inputs=optional_inputs,
                row_group_size=row_group_size,
            )
        )
        return fn

    return wrap


def source_stage(
    name: str,
    *,
    version: int,
    outputs: tuple[str, ...],
    config: type,
    plan: Callable[..., list[Any]],
    read: Callable[..., PartResult],
    optional_outputs: tuple[str, ...] = (),
    description: str = "",
    stamp: Callable[..., str | None] | None = None,
) -> None:
    """Register a stage that reads a dump (no input datasets).

    Each part spec ``plan`` returns may have a ``part_key()`` method: a digest of what the part
    reads (its rows' content), so that a rerun redoes only the parts whose input changed. Without
    one, the spec's ``repr`` is its key.
    """
    _check_config(config)
    _add(
        Stage(
            name,
            version,
            "source",
            (),
            outputs,
            config,
            plan=plan,
            read=read,
            stamp=stamp,
            primary_output=outputs[0],
            optional_outputs=optional_outputs,
            description=description,
        )
    )


def corpus_stage(
    name: str,
    *,
    version: int,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    config: type,
    optional_inputs: tuple[str, ...] = (),
    sparse_outputs: bool = False,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a stage that works on the whole corpus through a run context.

    ``optional_inputs``: datasets read when complete in the run (see :class:`Stage`).
    ``sparse_outputs``: a part writes only the outputs it returns (see :class:`Stage`).
    """
    _check_config(config)

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        _add(
            Stage(
                name,
                version,
                "corpus",
                inputs,
                outputs,
                config,
                fn=fn,
                description=(fn.__doc__ or "").strip().split("\n")[0],
                optional_inputs=optional_inputs,
                sparse_outputs=sparse_outputs,
            )
        )
        return fn

    return wrap


def load_builtin_stages() -> None:
    global _LOADED
    if _LOADED:
        return
    extra = tuple(m.strip() for m in os.environ.get("CLIP2CLINIC_STAGE_MODULES", "").split(",") if m.strip())
    for module in (*STAGE_MODULES, *extra):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A stage package that is not written yet is simply absent; a broken import inside
            # an existing package is a real error.
            if exc.name != module and not module.startswith(f"{exc.name}."):
                raise
    _LOADED = True


def get_stage(name: str) -> Stage:
    """The registered stage ``name``. Raises PipelineError(E_STAGE_UNKNOWN) with suggestions."""
    load_builtin_stages()
    if name not in _REGISTRY:
        raise PipelineError("E_STAGE_UNKNOWN", f"unknown stage {name!r}." + did_you_mean(name, _REGISTRY))
    return _REGISTRY[name]


def all_stages() -> dict[str, Stage]:
    load_builtin_stages()
    return dict(_REGISTRY)
