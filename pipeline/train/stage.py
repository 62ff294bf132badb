"""The ``train`` stage: the DAG's last node, the CLIP trainer launched on the run's shards.

A corpus stage that hands the work to ``python -m pipeline.train`` (torchrun when
``stages.train.nproc > 1``) in a subprocess, so the trainer runs exactly as it does on its own:

* **Where.** With a local cluster (no ``cluster.address``) or ``where=local`` the client process
  launches it. Connected to an existing scheduler (``where=auto``) or with ``where=cluster``, one
  Dask task asking for ``resources={"GPU": gpus}`` launches it on a worker that advertises them
  (``dask worker tcp://... --resources GPU=1``); the run folder must then be on a filesystem both
  machines see.
* **Folder.** ``<run out>/train/`` holds what the trainer writes (``config.json``, ``tokenizer/``,
  ``metrics.jsonl``, ``checkpoints/``, ``summary.json``) plus ``request.json`` (the config this
  stage asked for), ``train.log`` (the trainer's output) and ``stage.json`` (what the folder was
  trained from). A folder trained with another identity (:func:`pipeline.train.config.identity`)
  or from other shards is deleted first; the same config resumes from its last checkpoint after an
  interrupt; a finished run is trained again only when the stage's code or process count changed
  (or ``force=true``).
* **Outputs.** ``checkpoints`` (one row per kept checkpoint, with its sha256) and
  ``train_metrics`` (one row per logged optimizer step), part 0 each, from ``summary.json`` and
  ``metrics.jsonl``.

Imports only the stdlib, pyarrow, ``pipeline.core`` and ``pipeline.train.config`` at import time:
every CPU run imports the stage registry, and torch stays in the trainer's process.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.errors import PipelineError
from pipeline.core.registry import corpus_stage, get_stage
from pipeline.core.runner import CorpusContext, code_version, commit_corpus_part
from pipeline.core.schemas import load_schema
from pipeline.train.config import (
    ConfigError,
    TrainConfig,
    identity,
    resolve,
    to_dict,
)

log = logging.getLogger(__name__)

STAGE = "train"
FOLDER = "train"  # under the run's out
WHERE = ("auto", "local", "cluster")
# The trainer's exit codes (pipeline/train/__main__.py): 0 done, 2 config or data problem (the
# message names the fix), 3 the loss went non-finite (the last good checkpoint is kept).
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
TAIL_LINES = 20


@dataclass(frozen=True)
class TrainStageConfig(TrainConfig):
    """The trainer's config (``stages.train.preset=full``, ``stages.train.model.text.path=tiny``)
    plus how the stage launches it. ``out`` and ``data.shards`` are filled in from the run."""

    nproc: int = 1  # trainer processes on the machine that trains (torchrun when > 1)
    where: str = "auto"  # auto (cluster when connected to a scheduler) | local | cluster
    gpus: int = 1  # the Dask `GPU` resource the task asks a cluster worker for (0: any worker)


# -- config --------------------------------------------------------------------------------------


def trainer_config(config: TrainStageConfig, run_out: str) -> TrainConfig:
    """The :class:`TrainConfig` the trainer gets: the stage's fields minus the launch settings,
    ``out`` set to ``<run_out>/train`` and ``data.shards`` to ``<run_out>/shards`` unless given.

    Raises PipelineError(E_CONFIG_VALUE) for a ``stages.train.out`` outside the run.
    """
    folder = os.path.join(run_out, FOLDER)
    if config.out and os.path.abspath(config.out) != folder:
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"stages.train.out={config.out!r}: the train stage always trains into <out>/{FOLDER} "
            f"({folder}); drop stages.train.out, or set the run's out=... instead.",
        )
    base = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig)})
    shards = config.data.shards or os.path.join(run_out, "shards")
    return replace(base, out=folder, data=replace(base.data, shards=shards))


def check_config(config: TrainStageConfig, train: TrainConfig) -> TrainConfig:
    """The trainer's config with the preset resolved. Raises PipelineError(E_CONFIG_VALUE)."""
    problems = []
    if config.nproc < 1:
        problems.append(f"nproc must be at least 1, got {config.nproc}")
    if config.where not in WHERE:
        problems.append(f"where={config.where!r}: choose one of {', '.join(WHERE)}")
    if config.gpus < 0:
        problems.append(f"gpus must be >= 0, got {config.gpus}")
    if problems:
        raise PipelineError("E_CONFIG_VALUE", "stages.train: " + "; ".join(problems))
    try:
        return resolve(train)
    except ConfigError as exc:
        raise PipelineError("E_CONFIG_VALUE", f"stages.train: {exc}") from exc


def _saved_identity(path: Path) -> str | None:
    """The identity of the run a training folder's ``config.json`` holds (None: unreadable).

    The trainer writes ``{"config": to_dict(resolved), "identity": ..., "world_size": ...}``.
    """
    values = _read_json(path)
    found = values.get("identity") if isinstance(values, dict) else None
    return found if isinstance(found, str) else None


# -- where it runs -------------------------------------------------------------------------------


def runs_on_cluster(config: TrainStageConfig, client: Any) -> bool:
    """Whether to train on a cluster worker: ``where=cluster``, or ``auto`` with a client
    connected to an existing scheduler (a LocalCluster's client has ``client.cluster`` set)."""
    if config.where == "auto":
        return getattr(client, "cluster", None) is None
    return config.where == "cluster"


def check_gpu_workers(client: Any, gpus: int) -> None:
    """Raise PipelineError(E_TRAIN_NO_GPU) unless a worker advertises ``GPU >= gpus``."""
    if gpus == 0:
        return
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    offered = {address: info.get("resources", {}).get("GPU", 0) for address, info in workers.items()}
    if any(n >= gpus for n in offered.values()):
        return
    scheduler = client.scheduler.address if client.scheduler else "tcp://SCHEDULER:8786"
    have = (
        f"its {len(offered)} worker(s) offer GPU resources {sorted(set(offered.values()))}"
        if offered
        else "it has no workers"
    )
    raise PipelineError(
        "E_TRAIN_NO_GPU",
        f"stage 'train' asks the cluster for a worker with resources GPU={gpus}, and {have}. Start one "
        f"on the GPU machine with `dask worker {scheduler} --resources GPU={max(gpus, 1)}` (a worker "
        f"per machine, --nworkers 1), or set stages.train.where=local to train on this machine "
        f"(stages.train.gpus=0: on any worker).",
    )


# -- the training folder -------------------------------------------------------------------------


def prepare_folder(folder: Path, stamp: dict[str, Any], *, force: bool) -> bool:
    """Make ``folder`` ready to train for ``stamp``; return False when it already holds that run.

    Deleted first: a folder trained with another identity, from other shards or by another
    process count; a finished run of other code, or any finished run when ``force``. Kept: an
    interrupted run of the same identity, shards and process count (the trainer resumes it).
    """
    if not folder.exists():
        return True
    reason = None
    saved = _read_json(folder / "stage.json") or {}
    config_json = folder / "config.json"
    if (config_json.exists() and _saved_identity(config_json) != stamp["identity"]) or (
        saved and saved.get("identity") != stamp["identity"]
    ):
        reason = "it was trained with another config"
    elif saved and saved.get("upstream") != stamp["upstream"]:
        reason = "it was trained on other shards"
    elif saved and saved.get("nproc") != stamp["nproc"]:
        reason = "it was trained by another number of processes (a checkpoint resumes on as many)"
    elif (_read_json(folder / "summary.json") or {}).get("complete"):
        if saved == stamp and not force:
            return False
        reason = "its finished run is of other code or settings" if not force else "force=true"
    if reason:
        log.warning("train: deleting %s (%s); training afresh", folder, reason)
        shutil.rmtree(folder)
    return True


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# -- the launch (on the client, or in a Dask task on a GPU worker) -------------------------------


def trainer_command(request: str, nproc: int) -> list[str]:
    """The command line that trains from the request file ``request``."""
    if nproc > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        return [sys.executable, *launcher, "-m", "pipeline.train", f"config={request}"]
    return [sys.executable, "-m", "pipeline.train", f"config={request}"]


def launch(request: str, nproc: int, log_path: Path) -> None:
    """Run the trainer, streaming its output to stderr and appending it to ``log_path``.

    Raises PipelineError: E_TRAIN_DEPS (no torch here), E_TRAIN_NONFINITE (exit 3),
    E_TRAIN_CONFIG (exit 2), E_TRAIN_FAILED (any other failure).
    """
    if importlib.util.find_spec("torch") is None:
        raise PipelineError(
            "E_TRAIN_DEPS",
            f"stage 'train' needs PyTorch on {socket.gethostname()}: pip install '.[train]' there "
            "(a CUDA build of torch on a GPU machine).",
        )
    command = trainer_command(request, nproc)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail = bytearray()  # the output's last bytes, for the error message
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
    with log_path.open("ab") as logfile:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        logfile.write(f"\n=== {stamp} on {socket.gethostname()}: {' '.join(command)}\n".encode())
        logfile.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                logfile.write(chunk)
                logfile.flush()
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
                tail += chunk
                del tail[:-65536]
            code = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C, a cancelled task): the trainer checkpoints what it can and stops.
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        raise trainer_failure(code, tail.decode(errors="replace"), log_path)


def trainer_failure(code: int, output: str, log_path: Path) -> PipelineError:
    """The error for a trainer that exited with ``code`` after printing ``output`` (its end).

    torchrun exits 1 whatever its ranks did; the root cause's exit code in its failure report
    stands in for it, so a rank's exit 2 or 3 reads as the trainer's own.
    """
    lines = [ln for ln in re.split(r"[\r\n]+", output) if ln.strip()]
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", output, re.S)
    if code == 1 and root:
        code = int(root.group(1))
    said = [ln.strip() for ln in lines if ln.lstrip().startswith("error:")][-3:] or lines[-3:]
    checkpoints = log_path.parent / "checkpoints"
    if code == EXIT_NONFINITE:
        return PipelineError(
            "E_TRAIN_NONFINITE",
            f"the training loss went non-finite (NaN or inf); the last good checkpoint is kept in "
            f"{checkpoints}. Lower stages.train.optim.lr or raise optim.warmup_steps, then rerun "
            f"(it resumes from that checkpoint). Trainer said: {' | '.join(said)}",
        )
    if code == EXIT_CONFIG:
        return PipelineError(
            "E_TRAIN_CONFIG",
            f"the trainer refused its config or data: {' | '.join(said)} (full output: {log_path})",
        )
    if code < 0:
        how = f"was killed by signal {-code}"
    elif code > 128:
        how = f"was stopped by signal {code - 128} (after checkpointing)"
    else:
        how = f"exited with code {code}"
    if root:  # torchrun's own traceback and failure report say nothing the ranks' output does not
        report = next(i for i, ln in enumerate(lines) if "ChildFailedError" in ln or "Root Cause" in ln)
        starts = [i for i, ln in enumerate(lines[:report]) if ln.startswith("Traceback")]
        lines = lines[: starts[-1] if starts else report] or lines
    causes = [ln for ln in lines if _EXCEPTION.match(ln)]
    if causes:
        how += f" ({_EXCEPTION.sub('', causes[-1], count=1).strip()})"
    last = "\n  ".join(lines[-TAIL_LINES:])
    return PipelineError(
        "E_TRAIN_FAILED",
        f"the trainer {how}; its last lines (all in {log_path}):\n  {last}\n"
        "Rerun the same command to resume from the last checkpoint.",
    )


# A traceback's last line, as a process or a torchrun rank ("[rank0]: ValueError: ...") prints it.
_EXCEPTION = re.compile(r"^\s*(\[rank\d+\]:\s*)?(?=[\w.]*(Error|Exception|Interrupt)\b:?)")


def train_part(
    out: str, folder: str, nproc: int, fingerprint: str, train: bool, where: str
) -> dict[str, Any]:
    """Train (unless ``train`` is False: the folder already holds this run), then write the
    ``checkpoints`` and ``train_metrics`` tables as part 0. Runs on the client or on a worker;
    returns the part's marker.

    Raises PipelineError from :func:`launch`, or E_TRAIN_OUTPUT when the trainer's files are not
    what its contract says.
    """
    path = Path(folder)
    if train:
        launch(str(path / "request.json"), nproc, path / "train.log")
    summary = _read_json(path / "summary.json")
    if not summary:
        raise PipelineError(
            "E_TRAIN_OUTPUT",
            f"the trainer exited cleanly but wrote no {path / 'summary.json'}; "
            "rerun the same command to resume from the last checkpoint.",
        )
    if not summary.get("complete"):
        raise PipelineError(
            "E_TRAIN_STOPPED",
            f"the trainer stopped at step {summary.get('steps')} of {summary.get('total_steps', '?')} "
            f"(stages.train.stop_after) with a checkpoint in {path / 'checkpoints'}; rerun the same "
            "command (stop_after=0 to finish) to resume from it.",
        )
    config_json = (path / "config.json").read_text() if (path / "config.json").exists() else ""
    checkpoints = checkpoints_table(summary, path, Path(out), config_json)
    metrics = metrics_table(path / "metrics.jsonl")
    launched: dict[str, Any] = {"where": where, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        from distributed import get_worker

        launched["worker"] = get_worker().address
    except ValueError:  # not in a Dask task: the client launched it
        launched["worker"] = None
    extra = {
        "rows_in_by_dataset": {"checkpoints": checkpoints.num_rows, "train_metrics": metrics.num_rows},
        "launched": launched,
        "trained": train,
        "summary": {
            k: summary.get(k) for k in ("steps", "epochs", "samples", "world_size", "device", "seconds")
        },
    }
    tables = {"checkpoints": checkpoints, "train_metrics": metrics}
    n = checkpoints.num_rows
    return commit_corpus_part(out, STAGE, 0, tables, fingerprint, n, n, extra=extra)


# -- the output tables ---------------------------------------------------------------------------


def checkpoints_table(summary: dict[str, Any], folder: Path, out: Path, config_json: str) -> pa.Table:
    """One row per checkpoint ``summary.json`` lists; file paths relative to the run's ``out``.

    Raises PipelineError(E_TRAIN_OUTPUT) for a listed file that is not there or not of its size.
    """
    final = summary.get("final")
    rows = []
    for entry in summary.get("checkpoints") or []:
        file = folder / entry["file"]
        if not file.exists() and (folder / "checkpoints" / entry["file"]).exists():
            file = folder / "checkpoints" / entry["file"]
        if not file.exists() or file.stat().st_size != entry["bytes"]:
            raise PipelineError(
                "E_TRAIN_OUTPUT",
                f"summary.json lists checkpoint {entry['file']} ({entry['bytes']} bytes), but {file} is "
                "missing or of another size; rerun with force=true to train afresh.",
            )
        relative = file.relative_to(folder).as_posix()
        rows.append(
            {
                "file": file.relative_to(out).as_posix(),
                "step": int(entry["step"]),
                "epoch": int(entry["epoch"]),
                "sha256": str(entry["sha256"]),
                "bytes": int(entry["bytes"]),
                "is_final": final is not None and relative in (final, f"checkpoints/{final}"),
                "config": config_json,
                "device": str(summary.get("device", "")),
                "world_size": int(summary.get("world_size", 1)),
            }
        )
    if final and not any(r["is_final"] for r in rows):
        raise PipelineError(
            "E_TRAIN_OUTPUT",
            f"summary.json names final checkpoint {final!r}, which its checkpoint list lacks.",
        )
    return _table(rows, "checkpoints")


def metrics_table(path: Path) -> pa.Table:
    """One row per optimizer step of ``metrics.jsonl`` (a step logged twice across a resume keeps
    its last line); keys outside the schema go to ``extra`` as JSON."""
    schema = load_schema("train_metrics")
    names = set(schema.names) - {"extra"}
    by_step: dict[int, dict[str, Any]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a torn last line of an interrupted run
            raise PipelineError("E_TRAIN_OUTPUT", f"{path}:{number} is not JSON") from None
        if "step" not in record:
            continue
        row = {k: record.get(k) for k in names}
        others = {k: v for k, v in record.items() if k not in names}
        row["extra"] = json.dumps(others, sort_keys=True) if others else None
        by_step[int(record["step"])] = row
    return _table([by_step[s] for s in sorted(by_step)], "train_metrics")


def _table(rows: list[dict[str, Any]], dataset: str) -> pa.Table:
    """``rows`` as a table of ``dataset``'s schema (ints and floats coerced to the column type)."""
    schema = load_schema(dataset)
    columns = {}
    for column in schema.columns:
        values = [r.get(column.name) for r in rows]
        if pa.types.is_integer(column.type):
            values = [None if v is None else int(v) for v in values]
        elif pa.types.is_floating(column.type):
            values = [None if v is None else float(v) for v in values]
        columns[column.name] = pa.array(values, column.type)
    return pa.table(columns)


# -- the stage -----------------------------------------------------------------------------------


@corpus_stage(
    STAGE,
    version=1,
    inputs=("shards/train",),
    optional_inputs=("shards/validate",),
    outputs=("checkpoints", "train_metrics"),
    config=TrainStageConfig,
)
def train(ctx: CorpusContext, *, config: TrainStageConfig) -> None:
    """Train the CLIP model on the run's shards: checkpoints and per-step training metrics."""
    if not ctx.store.local:
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"stage 'train' writes checkpoints with torch into a local folder; out={ctx.out} is not one. "
            "Use a local path (on a cluster: a filesystem every machine mounts).",
        )
    out = os.path.abspath(ctx.store.root)  # the trainer and a remote worker need no cwd of ours
    train_config = check_config(config, trainer_config(config, out))
    on_cluster = runs_on_cluster(config, ctx.client)
    if on_cluster:
        check_gpu_workers(ctx.client, config.gpus)
    if ctx.resume(0):
        return
    folder = Path(train_config.out)
    stamp = {
        "identity": identity(train_config),
        "upstream": ctx.runner.upstream_fingerprints(ctx.stage),
        "code": code_version(get_stage(STAGE)),
        "nproc": config.nproc,
    }
    needed = prepare_folder(folder, stamp, force=ctx.runner.force)
    folder.mkdir(parents=True, exist_ok=True)
    if needed:
        request = to_dict(trainer_config(config, out))  # the preset left to the trainer to resolve
        (folder / "request.json").write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
        (folder / "stage.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    where = "cluster" if on_cluster else "local"
    args = (out, str(folder), config.nproc, ctx.fingerprint, needed, where)
    if on_cluster:
        log.info(
            "train: on a cluster worker with GPU=%d; its output goes to %s", config.gpus, folder / "train.log"
        )
        future = ctx.client.submit(
            train_part,
            *args,
            resources={"GPU": config.gpus} if config.gpus else None,
            key=f"{STAGE}-{uuid.uuid4().hex[:8]}",
            pure=False,
        )
        marker = future.result()
    else:
        marker = train_part(*args)
    ctx.commit(0, marker)
