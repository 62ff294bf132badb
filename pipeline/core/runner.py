"""The runner: maps stages over partitions on Dask, validates, writes atomically, keeps manifests.

Dask distributed is the only execution engine: a LocalCluster of worker processes by default, an
existing scheduler when ``cluster.address`` is set. Data never passes through the client: each
task reads its inputs from the run folder, runs the stage's pure function, writes its outputs and
its part marker, and returns a small summary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import resource
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client, as_completed

from pipeline.core.cluster import ClusterConfig, dask_client  # noqa: F401 - re-exported
from pipeline.core.collector import collector_paused
from pipeline.core.dag import Dag
from pipeline.core.errors import REJECT_REASONS, PipelineError
from pipeline.core.io import REJECTS, STATE_DIR, Store, package_versions, stable_hash
from pipeline.core.registry import CONTENT, PartResult, PlanContext, Stage, get_stage
from pipeline.core.schemas import empty, load_schema

log = logging.getLogger(__name__)

PIPELINE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StageReport:
    """What one stage did, for the summary table and tests."""

    stage: str
    status: str  # ran, resumed, skipped (up to date)
    parts: int = 0
    parts_done_before: int = 0
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    datasets: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""


class Progress(Protocol):
    def start(self, stage: str, total: int, done: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...
    def finish(self, stage: str) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int, done: int) -> None:
        log.info("%s: %d parts (%d already done)", stage, total, done)

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass


# -- fingerprints --------------------------------------------------------------------------------


def code_version(stage: Stage) -> str:
    """Hash of the stage's package sources and data files plus its output schemas.

    Editing a stage's code, lexicon or schema reruns it; editing another stage does not.
    """
    module_file = Path(__import__(stage.module, fromlist=["_"]).__file__ or "")
    package_dir = module_file.parent
    # A stage in a package: the whole package (code and data files). A lone module: itself.
    files = sorted(package_dir.rglob("*")) if (package_dir / "__init__.py").exists() else [module_file]
    digest = hashlib.sha256()
    for path in files:
        if (
            path.suffix in {".py", ".yaml", ".yml", ".json", ".tsv", ".txt"}
            and "__pycache__" not in path.parts
        ):
            digest.update(str(path.relative_to(package_dir)).encode())
            digest.update(path.read_bytes())
    for dataset in (*stage.outputs, REJECTS):
        schema = load_schema(dataset)
        digest.update(f"{schema.name}:{schema.version}:{schema.columns}".encode())
    return digest.hexdigest()[:16]


def _config_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) else dict(config)


def content_digest(config: Any) -> dict[str, str]:
    """Digests of the local files (or folders) named by config fields marked ``metadata={"content": True}``
    (a field may also hold a tuple of paths). ``{"content": fn}``: ``fn(value)`` lists the files
    to hash (a training folder's scored checkpoint, not every file under it).

    A lexicon folder or a RadGraph file edited in place must rerun its stage even though the
    path in the config did not change. Other paths (dump roots) are not read: sources
    fingerprint their own listing. Files are read in blocks (a checkpoint may be gigabytes).
    """
    if not is_dataclass(config):
        return {}
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        content = f.metadata.get(CONTENT)
        if not content or not value:
            continue
        digest = hashlib.sha256()
        for item in value if isinstance(value, tuple | list) else (value,):
            path = Path(str(item))
            if callable(content):  # the field names more than it uses: hash what it uses
                paths = [Path(p) for p in content(str(item))]
            else:
                paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for p in paths:
                digest.update(
                    str(p.relative_to(path) if path.is_dir() and p.is_relative_to(path) else p.name).encode()
                )
                if not p.exists():
                    digest.update(b"<missing>")
                    continue
                with open(p, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                        digest.update(block)
        out[f.name] = digest.hexdigest()[:16]
    return out


# -- worker-side tasks ---------------------------------------------------------------------------


def _count_rejects(rejects: pa.Table) -> dict[str, int]:
    if rejects.num_rows == 0:
        return {}
    counts = rejects.group_by("dataset").aggregate([("row_id", "count")])
    return dict(zip(counts["dataset"].to_pylist(), counts["row_id_count"].to_pylist(), strict=True))


def _check_reject_codes(stage: Stage, rejects: pa.Table) -> None:
    if rejects.num_rows:
        bad = set(rejects["reason_code"].to_pylist()) - set(REJECT_REASONS)
        if bad:
            raise PipelineError(
                "E_REJECT_CODE", f"stage {stage.name!r} emitted unknown reject codes {sorted(bad)}"
            )


def _commit_part(
    store: Store,
    stage: Stage,
    index: int,
    tables: Mapping[str, pa.Table],
    fingerprint: str,
    accounting: dict[str, Any],
    started: float,
    row_group_size: int | None = None,
    phases: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write every output of one part, then its marker (last, so a marker means complete).

    A stage with ``sparse_outputs`` writes only the outputs the part returned. ``phases``: the
    part's seconds so far by phase (read, compute, check); the write is added here, so the marker
    shows what a part spends outside the stage's own work.
    """
    writing = time.perf_counter()
    unknown = set(tables) - set(stage.outputs) - {REJECTS}
    if unknown:
        raise PipelineError(
            "E_STAGE_OUTPUT", f"stage {stage.name!r} returned undeclared datasets {sorted(unknown)}"
        )
    missing = set(stage.outputs) - set(tables) - set(stage.optional_outputs)
    if missing and not stage.sparse_outputs:
        raise PipelineError("E_STAGE_OUTPUT", f"stage {stage.name!r} did not return {sorted(missing)}")
    rows: dict[str, int] = {}
    for dataset in stage.outputs:
        table = tables.get(dataset)
        if table is None and stage.sparse_outputs:
            continue
        rows[dataset] = store.write_table(
            table if table is not None else empty(dataset), dataset, index, row_group_size=row_group_size
        )
    rejects = tables.get(REJECTS)
    rejects = rejects if rejects is not None else empty(REJECTS)
    _check_reject_codes(stage, rejects)
    store.write_table(rejects, REJECTS, index, stage=stage.name)
    done = time.perf_counter()
    marker = {
        "fingerprint": fingerprint,
        "index": index,
        "rows": rows,
        "rejected": _count_rejects(rejects),
        "seconds": round(done - started, 4),
        "phases": {k: round(v, 4) for k, v in {**(phases or {}), "write": done - writing}.items()},
        "worker_pid": os.getpid(),
        # the worker's peak so far (Linux: KiB), so a run's records show its memory high-water mark
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **accounting,
    }
    store.write_json(store.marker_path(stage.name, index), marker)
    return marker


@collector_paused()
def run_source_part(
    out: str, stage_name: str, config: Any, index: int, spec: Any, fingerprint: str
) -> dict[str, Any]:
    """Worker task: read one part of a dump, check rows_in == rows_out + rejects per dataset
    (the cyclic collector paused: :mod:`pipeline.core.collector`)."""
    started = time.perf_counter()
    stage = get_stage(stage_name)
    assert stage.read is not None
    result: PartResult = stage.read(spec, config)
    computed = time.perf_counter()
    rejects = result.tables.get(REJECTS)
    rejected = _count_rejects(rejects) if rejects is not None else {}
    for dataset, n_in in result.rows_in.items():
        n_out = result.tables[dataset].num_rows if dataset in result.tables else 0
        if n_in != n_out + rejected.get(dataset, 0):
            raise PipelineError(
                "E_ACCOUNTING",
                f"{stage_name} part {index}: {dataset} rows_in {n_in} != rows_out {n_out} + rejected {rejected.get(dataset, 0)}",
            )
    primary = stage.primary_output or stage.outputs[0]
    n_in = result.rows_in.get(primary, 0)
    accounting = {
        "rows_in": n_in,
        "rows_out": n_in - rejected.get(primary, 0),
        "rows_in_by_dataset": result.rows_in,
        "notes": result.notes,
    }
    phases = {"compute": computed - started, "check": time.perf_counter() - computed}
    return _commit_part(
        Store(out), stage, index, result.tables, fingerprint, accounting, started, phases=phases
    )


@collector_paused()
def run_map_part(
    out: str, stage_name: str, config: Any, index: int, fingerprint: str, optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Worker task: read one aligned part of every input (and of the ``optional`` inputs present),
    run the stage, check accounting, write (the cyclic collector paused:
    :mod:`pipeline.core.collector`)."""
    started = time.perf_counter()
    stage = get_stage(stage_name)
    store = Store(out)
    inputs = {dataset: store.read_part(dataset, index) for dataset in (*stage.inputs, *optional)}
    read = time.perf_counter()
    assert stage.fn is not None
    tables = stage.fn(inputs, config=config)
    computed = time.perf_counter()
    primary_in = inputs[stage.inputs[0]]
    keys_in = set(primary_in[stage.key].to_pylist()) if primary_in.num_rows else set()
    primary = stage.primary_output or stage.outputs[0]
    keys_out: set = set()
    for dataset in (primary,) if isinstance(primary, str) else primary:
        table = tables.get(dataset)
        if table is not None and table.num_rows:
            keys_out.update(pc.unique(table[stage.key]).to_pylist())
    rejects = tables.get(REJECTS)
    keys_rejected = set(rejects["row_id"].to_pylist()) if rejects is not None and rejects.num_rows else set()
    if keys_out | keys_rejected != keys_in or keys_out & keys_rejected:
        lost = sorted(keys_in - keys_out - keys_rejected)[:5]
        raise PipelineError(
            "E_ACCOUNTING",
            f"{stage_name} part {index}: {len(keys_in)} rows in, {len(keys_out)} out, {len(keys_rejected)} rejected "
            f"(lost: {lost}; both out and rejected: {sorted(keys_out & keys_rejected)[:5]}; "
            f"unknown: {sorted((keys_out | keys_rejected) - keys_in)[:5]})",
        )
    accounting = {"rows_in": len(keys_in), "rows_out": len(keys_out)}
    phases = {
        "read": read - started,
        "compute": computed - read,
        "check": time.perf_counter() - computed,
    }
    return _commit_part(
        store,
        stage,
        index,
        tables,
        fingerprint,
        accounting,
        started,
        row_group_size=stage.row_group_size,
        phases=phases,
    )


# -- client side ---------------------------------------------------------------------------------


class Runner:
    """Runs stages and DAGs into one output folder on one Dask client."""

    def __init__(
        self,
        out: str,
        client: Client | Callable[[], Client],
        *,
        progress: Progress | None = None,
        force: bool = False,
        workers: int | None = None,
    ) -> None:
        """``client`` may be a function that starts one: a run whose stages are all up to date
        then never starts a cluster. ``workers`` (threads in all) sizes parts without asking it."""
        self.store = Store(out)
        self.out = out
        self._client = client
        self._workers = workers
        self.progress = progress or NullProgress()
        self.force = force
        self.finished: list[StageReport] = []  # of run_dag, so far
        self.running: str | None = None

    def get_client(self) -> Client:
        if not isinstance(self._client, Client):
            self._client = self._client()
        return self._client

    @property
    def client(self) -> Client:
        return self.get_client()

    def run_dag(self, dag: Dag, configs: Mapping[str, Any]) -> list[StageReport]:
        """Run every stage of ``dag`` in order; ``configs`` maps stage name to its config.

        Interrupted, ``finished`` holds the reports of the stages done and ``running`` the name
        of the stage it was in (what the CLI tells the user)."""
        self.finished = []
        for stage in dag.stages:
            self.running = stage.name
            self.finished.append(self.run_stage(stage, configs[stage.name]))
        self.running = None
        return self.finished

    def upstream_fingerprints(self, stage: Stage) -> dict[str, str]:
        """Fingerprints of the stage's inputs; raises E_INPUT_MISSING naming the stage to run."""
        found = {}
        for dataset in stage.inputs:
            manifest = self.store.read_json(self.store.manifest_path(dataset))
            if not manifest or not manifest.get("complete"):
                raise PipelineError(
                    "E_INPUT_MISSING",
                    f"stage {stage.name!r} needs dataset {dataset!r}, which is not complete under {self.out}. "
                    f"Run the stage that writes it first (or run a DAG: dag=labels).",
                )
            found[dataset] = manifest["fingerprint"]
        for dataset in self.present_optional_inputs(stage):
            found[dataset] = self.store.read_json(self.store.manifest_path(dataset))["fingerprint"]
        return found

    def present_optional_inputs(self, stage: Stage) -> tuple[str, ...]:
        """The stage's optional inputs that are complete in this run."""
        present = []
        for dataset in stage.optional_inputs:
            manifest = self.store.read_json(self.store.manifest_path(dataset))
            if manifest and manifest.get("complete"):
                present.append(dataset)
        return tuple(present)

    def fingerprint(self, stage: Stage, config: Any, extra: str = "") -> str:
        """The stage's fingerprint over its whole input (corpus stages use it for every part)."""
        return stable_hash(
            {
                "stage": stage.id,
                "config": _config_dict(config),
                "files": content_digest(config),
                "upstream": self.upstream_fingerprints(stage),
                "code": code_version(stage),
                "extra": extra,
            }
        )[:24]

    def _base(self, stage: Stage, config: Any) -> str:
        """What every part of a source or map stage shares: stage, config, content files, code."""
        return stable_hash(
            {
                "stage": stage.id,
                "config": _config_dict(config),
                "files": content_digest(config),
                "code": code_version(stage),
            }
        )[:24]

    def _input_part_keys(self, stage: Stage, n_parts: int) -> list[list[str]]:
        """Per part, the fingerprints of that part of every input (a dataset written before part
        fingerprints existed, or by a corpus stage, gives its whole fingerprint for each part)."""
        self.upstream_fingerprints(stage)  # raises E_INPUT_MISSING naming what to run
        keys: list[list[str]] = [[] for _ in range(n_parts)]
        for dataset in (*stage.inputs, *self.present_optional_inputs(stage)):
            manifest = self.store.read_json(self.store.manifest_path(dataset))
            by_part = manifest.get("part_fingerprints") or {}
            for index in range(n_parts):
                keys[index].append(f"{dataset}:{by_part.get(str(index), manifest['fingerprint'])}")
        return keys

    def _up_to_date(self, stage: Stage, fingerprint: str) -> dict[str, Any] | None:
        if self.force:
            return None
        record = self.store.read_json(self.store.stage_record_path(stage.name))
        if not record or record.get("fingerprint") != fingerprint or not record.get("complete"):
            return None
        for dataset in stage.outputs:
            manifest = self.store.read_json(self.store.manifest_path(dataset))
            if not manifest or manifest.get("fingerprint") != fingerprint:
                return None
        return record

    def _invalidate(self, stage: Stage) -> None:
        # Downstream stages must not see an old manifest while its parts are being rewritten.
        for path in [
            self.store.stage_record_path(stage.name),
            *(self.store.manifest_path(d) for d in stage.outputs),
        ]:
            if self.store.fs.exists(path):
                self.store.fs.rm(path)

    def run_stage(self, stage: Stage, config: Any) -> StageReport:
        """Run one stage (skipping it when up to date, resuming finished parts)."""
        started = time.perf_counter()
        if stage.kind == "corpus":
            return self._run_corpus(stage, config, started)
        base = self._base(stage, config)
        specs: list[Any] = []
        stamp = None
        if stage.kind == "source":
            assert stage.plan is not None
            stamp = stage.stamp(config) if stage.stamp is not None else None
            record = self._stamped(stage, base, stamp)
            if record is not None:  # the same bytes as last time: no need to read them again
                return _skipped(stage, record, record["fingerprint"])
            self._remove_staging(stage)  # of an earlier run that stopped (the run folder is ours)
            staging = self.store.path(STATE_DIR, stage.name, f"staging-{uuid.uuid4().hex[:8]}")
            size = getattr(config, "part_size", None)
            ctx = PlanContext(
                staging_dir=self.store.url_of(staging),
                part_size=None if size is None else int(size),
                workers=self.workers(),
            )
            specs = stage.plan(config, ctx)
            if stamp is None and stage.stamp is not None:  # the plan may have made it (the demo dump)
                stamp = stage.stamp(config)
            if not specs:
                self._remove_staging(stage)
                raise PipelineError(
                    "E_DUMP_EMPTY",
                    f"stage {stage.name!r} found no rows to read in its input: point it at a dump "
                    "with at least one row (check dataset.path / dataset.root).",
                )
            n_parts = len(specs)
            part_keys = [[spec.part_key() if hasattr(spec, "part_key") else repr(spec)] for spec in specs]
        else:
            n_parts = len(self.store.part_indices(stage.inputs[0]))
            part_keys = self._input_part_keys(stage, n_parts)
        part_fps = [stable_hash([base, index, key])[:24] for index, key in enumerate(part_keys)]
        fingerprint = stable_hash([base, part_fps])[:24]
        record = self._up_to_date(stage, fingerprint)
        if record is not None:
            self._remove_staging(stage)
            if stamp is not None and record.get("stamp") != stamp:  # touched, equal rows: note the bytes
                self.store.write_json(self.store.stage_record_path(stage.name), {**record, "stamp": stamp})
            return _skipped(stage, record, fingerprint)
        self._invalidate(stage)
        markers: dict[int, dict[str, Any]] = {}
        todo = []
        for index in range(n_parts):
            marker = None if self.force else self.store.read_json(self.store.marker_path(stage.name, index))
            if (
                marker
                and marker.get("fingerprint") == part_fps[index]
                and self._has_files(stage, marker, index)
            ):
                markers[index] = marker
            else:
                todo.append(index)
        done_before = len(markers)
        self.progress.start(stage.name, n_parts, done_before)
        futures = {}
        run_token = uuid.uuid4().hex[:8]  # keys must not collide with a failed earlier attempt
        optional = self.present_optional_inputs(stage)
        for index in todo:
            if stage.kind == "source":
                fut = self.client.submit(
                    run_source_part,
                    self.out,
                    stage.name,
                    config,
                    index,
                    specs[index],
                    part_fps[index],
                    key=f"{stage.name}-{run_token}-{index}",
                    pure=False,
                )
            else:
                fut = self.client.submit(
                    run_map_part,
                    self.out,
                    stage.name,
                    config,
                    index,
                    part_fps[index],
                    optional,
                    key=f"{stage.name}-{run_token}-{index}",
                    pure=False,
                )
            futures[fut] = index
        failures: list[tuple[int, BaseException, str]] = []
        for fut in as_completed(futures):
            index = futures[fut]
            try:
                markers[index] = fut.result()
            except Exception as exc:  # noqa: BLE001 - gathered, then reported as one error
                failures.append((index, exc, "".join(traceback.format_exception(exc))))
            self.progress.advance(stage.name)
        self.progress.finish(stage.name)
        if failures:
            failures.sort(key=lambda f: f[0])
            index, exc, tb = failures[0]
            log.error("stage %s part %d failed:\n%s", stage.name, index, tb)
            if isinstance(exc, PipelineError):
                raise PipelineError(
                    exc.code,
                    f"{len(failures)} of {n_parts} parts of {stage.name!r} failed; "
                    f"first (part {index}): {exc.message}",
                ) from exc
            raise PipelineError(
                "E_PART_FAILED",
                f"{len(failures)} of {n_parts} parts of {stage.name!r} failed; first (part {index}): "
                f"{type(exc).__name__}: {exc}. Finished parts are kept: rerun the same command to resume.",
            ) from exc
        return self._finalise(
            stage,
            fingerprint,
            markers,
            n_parts,
            started,
            done_before,
            part_fps=part_fps,
            base=base,
            stamp=stamp,
        )

    def _stamped(self, stage: Stage, base: str, stamp: str | None) -> dict[str, Any] | None:
        """The completion record of a source stage whose input has ``stamp`` and ``base`` again."""
        if stamp is None or self.force:
            return None
        record = self.store.read_json(self.store.stage_record_path(stage.name))
        if not record or record.get("stamp") != stamp or record.get("base") != base:
            return None
        return self._up_to_date(stage, record["fingerprint"])

    def _remove_staging(self, stage: Stage) -> None:
        folder = self.store.path(STATE_DIR, stage.name)
        if not self.store.fs.exists(folder):
            return
        for name in self.store.fs.ls(folder, detail=False):
            if posixpath.basename(name.rstrip("/")).startswith("staging"):
                self.store.fs.rm(name, recursive=True)

    def _has_files(self, stage: Stage, marker: Mapping[str, Any], index: int) -> bool:
        """A finished part's files are all there (one deleted by hand: redo the part)."""
        return all(self.store.fs.exists(self.store.part_path(d, index)) for d in marker.get("rows", {}))

    def workers(self) -> int:
        """Worker threads of the cluster, for part sizes (a run with nothing to do asks nobody)."""
        if self._workers is None:
            self._workers = max(1, sum(self.get_client().nthreads().values()))
        return self._workers

    def _finalise(
        self,
        stage: Stage,
        fingerprint: str,
        markers: Mapping[int, dict[str, Any]],
        n_parts: int,
        started: float,
        done_before: int = 0,
        *,
        part_fps: list[str] | None = None,
        base: str | None = None,
        stamp: str | None = None,
    ) -> StageReport:
        keep = range(n_parts)
        self._remove_stale_markers(stage, markers)
        for dataset in stage.outputs:
            if stage.sparse_outputs:  # a part index belongs to the outputs its marker names
                self.store.remove_parts_except(
                    dataset, [i for i, m in markers.items() if dataset in m["rows"]]
                )
            else:
                self.store.remove_parts_except(dataset, keep)
        self.store.remove_parts_except(REJECTS, keep, stage=stage.name)
        self._remove_staging(stage)
        seconds = time.perf_counter() - started
        datasets = {d: sum(m["rows"].get(d, 0) for m in markers.values()) for d in stage.outputs}
        rejected_by_dataset: dict[str, int] = {}
        for m in markers.values():
            for d, n in m["rejected"].items():
                rejected_by_dataset[d] = rejected_by_dataset.get(d, 0) + n
        rows_in = sum(m["rows_in"] for m in markers.values())
        rows_out = sum(m["rows_out"] for m in markers.values())
        rejected = rows_in - rows_out
        part_seconds = [m["seconds"] for m in markers.values()]
        phase_seconds: dict[str, float] = {}
        for m in markers.values():
            for phase, v in m.get("phases", {}).items():
                phase_seconds[phase] = phase_seconds.get(phase, 0.0) + v
        now = datetime.now(UTC).isoformat(timespec="seconds")
        common = {
            "stage": stage.id,
            "fingerprint": fingerprint,
            "parts": n_parts,
            "complete": True,
            "created": now,
            "packages": package_versions(),
            "timings": {
                "stage_seconds": round(seconds, 3),
                "part_seconds_total": round(sum(part_seconds), 3),
                "part_seconds_max": round(max(part_seconds, default=0.0), 3),
                "part_phase_seconds": {k: round(v, 3) for k, v in phase_seconds.items()},
                "worker_peak_rss_mib": max(
                    (m.get("worker_peak_rss_mib", 0.0) for m in markers.values()), default=0.0
                ),
            },
            "stage_rows": {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rejected},
        }
        notes: dict[str, int] = {}
        for m in markers.values():
            for key, n in m.get("notes", {}).items():
                notes[key] = notes.get(key, 0) + n
        if notes:
            common["notes"] = notes
        if part_fps is not None:  # what a downstream part follows
            common["part_fingerprints"] = {str(i): fp for i, fp in enumerate(part_fps) if i in markers}
        for dataset in stage.outputs:
            rows_in_d = sum(m.get("rows_in_by_dataset", {}).get(dataset, 0) for m in markers.values())
            manifest = {
                **common,
                "dataset": dataset,
                "schema": dataset,
                "schema_version": load_schema(dataset).version,
                "rows": datasets[dataset],
                "rows_rejected": rejected_by_dataset.get(dataset, 0),
            }
            if rows_in_d:
                manifest["rows_in"] = rows_in_d
            self.store.write_json(self.store.manifest_path(dataset), manifest)
        self._update_rejects_manifest(stage, rejected_by_dataset, fingerprint, now)
        self.store.write_json(
            self.store.stage_record_path(stage.name),
            {
                **common,
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rejected": rejected,
                "datasets": datasets,
                "rejected_by_dataset": rejected_by_dataset,
                "base": base,
                "stamp": stamp,
            },
        )
        status = "resumed" if done_before else "ran"
        return StageReport(
            stage.name,
            status,
            parts=n_parts,
            parts_done_before=done_before,
            rows_in=rows_in,
            rows_out=rows_out,
            rejected=rejected,
            seconds=seconds,
            datasets=datasets,
            fingerprint=fingerprint,
        )

    def _remove_stale_markers(self, stage: Stage, markers: Mapping[int, dict[str, Any]]) -> None:
        """Delete part markers of indices this run did not produce: their files are removed too,
        and a later run with the old fingerprint must not take them for finished parts."""
        folder = self.store.path("_state", stage.name)
        if not self.store.fs.exists(folder):
            return
        for name in self.store.fs.ls(folder, detail=False):
            base = posixpath.basename(name)
            if base.startswith("part-") and base.endswith(".json") and int(base[5:10]) not in markers:
                self.store.fs.rm(name)

    def _update_rejects_manifest(
        self, stage: Stage, by_dataset: Mapping[str, int], fingerprint: str, now: str
    ) -> None:
        path = self.store.manifest_path(REJECTS)
        manifest = self.store.read_json(path) or {"dataset": REJECTS, "schema": REJECTS, "stages": {}}
        manifest["schema_version"] = load_schema(REJECTS).version
        manifest["stages"][stage.name] = {
            "fingerprint": fingerprint,
            "rows": sum(by_dataset.values()),
            "by_dataset": dict(by_dataset),
            "created": now,
        }
        manifest["rows"] = sum(s["rows"] for s in manifest["stages"].values())
        manifest["complete"] = True
        self.store.write_json(path, manifest)

    # -- corpus stages -----------------------------------------------------------------------
    def _run_corpus(self, stage: Stage, config: Any, started: float) -> StageReport:
        fingerprint = self.fingerprint(stage, config)
        record = self._up_to_date(stage, fingerprint)
        if record is not None:
            return _skipped(stage, record, fingerprint)
        self._invalidate(stage)
        ctx = CorpusContext(self, stage, fingerprint)
        assert stage.fn is not None
        self.progress.start(stage.name, 1, 0)
        stage.fn(ctx, config=config)
        self.progress.advance(stage.name)
        self.progress.finish(stage.name)
        return self._finalise(stage, fingerprint, ctx.markers, ctx.n_parts, started, ctx.done_before)


def _skipped(stage: Stage, record: Mapping[str, Any], fingerprint: str) -> StageReport:
    """The report of a stage found up to date: its last completion record, nothing run."""
    log.info("%s is up to date (fingerprint %s)", stage.name, fingerprint)
    return StageReport(
        stage.name,
        "skipped",
        parts=record["parts"],
        rows_in=record["rows_in"],
        rows_out=record["rows_out"],
        rejected=record["rejected"],
        datasets=record["datasets"],
        fingerprint=fingerprint,
    )


class CorpusContext:
    """What a corpus stage gets: the client, readers of its inputs, and part writers."""

    def __init__(self, runner: Runner, stage: Stage, fingerprint: str) -> None:
        self.runner = runner
        self.stage = stage
        self.fingerprint = fingerprint
        self.out = runner.out
        self.store = runner.store
        self.markers: dict[int, dict[str, Any]] = {}
        self.done_before = 0  # parts an earlier, interrupted run finished (see resume)

    @property
    def client(self) -> Client:
        """The run's client, started on first use (a stage with nothing to schedule needs none)."""
        return self.runner.client

    @property
    def n_parts(self) -> int:
        return max(self.markers, default=-1) + 1

    def input_parts(self, dataset: str) -> list[int]:
        return self.store.part_indices(dataset)

    def commit(self, index: int, marker: dict[str, Any]) -> None:
        """Record a part written by :func:`commit_corpus_part` (usually on a worker)."""
        self.markers[index] = marker

    def resume(self, index: int) -> bool:
        """Keep part ``index`` when an earlier run finished it with this fingerprint; say whether it did."""
        marker = self.store.read_json(self.store.marker_path(self.stage.name, index))
        if not marker or marker.get("fingerprint") != self.fingerprint or self.runner.force:
            return False
        if not self.runner._has_files(self.stage, marker, index):
            return False
        self.markers[index] = marker
        self.done_before += 1
        return True


def commit_corpus_part(
    out: str,
    stage_name: str,
    index: int,
    tables: Mapping[str, pa.Table],
    fingerprint: str,
    rows_in: int,
    rows_out: int,
    *,
    row_group_size: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one part of a corpus stage's outputs (callable on a worker).

    ``extra`` joins the part's marker (what the stage's own index needs later).
    """
    started = time.perf_counter()
    stage = get_stage(stage_name)
    accounting = {"rows_in": rows_in, "rows_out": rows_out, **(extra or {})}
    return _commit_part(
        Store(out), stage, index, tables, fingerprint, accounting, started, row_group_size=row_group_size
    )


def config_fields(config_type: type) -> list[str]:
    return [f.name for f in fields(config_type)]
