"""Entry point: ``python -m pipeline.run [key=value ...]``. Config in, DAG run out; wiring only.

Examples::

    python -m pipeline.run                                   # demo dump -> demo DAG -> summary
    python -m pipeline.run dag=labels dataset=mimic_cxr dataset.root=/data/mimic-cxr out=runs/mimic
    python -m pipeline.run stage=extract out=runs/mimic      # one stage; its inputs must exist
    python -m pipeline.run dag=labels dataset=table dataset.path=reports.csv \
        dataset.id_column=uid dataset.text_columns=[findings,impression]
    python -m pipeline.run dag=preprocess cluster.address=tcp://10.0.0.5:8786 profile=full
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.core.cluster import lazy_client
from pipeline.core.config import RunConfig, compose_run
from pipeline.core.dag import Dag, build_dag, load_dag
from pipeline.core.errors import PipelineError
from pipeline.core.lock import local_root, run_lock
from pipeline.core.runner import Runner, StageReport

log = logging.getLogger("pipeline")


class RichProgress:
    """One progress bar per stage, on stderr, so stdout keeps only the summary."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("parts"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, stage: str, total: int, done: int) -> None:
        self.tasks[stage] = self.bars.add_task(stage, total=total, completed=done)

    def advance(self, stage: str, n: int = 1) -> None:
        self.bars.advance(self.tasks[stage], n)

    def finish(self, stage: str) -> None:
        pass


def select_dag(cfg: RunConfig) -> Dag:
    """The DAG to run: ``stage=`` (one stage), ``dag=``, or the default for the dataset."""
    if cfg.stage and cfg.dag:
        raise PipelineError("E_CONFIG", "give either stage=NAME or dag=NAME, not both.")
    if cfg.stage:
        # A single stage: its inputs must already exist in `out` (the runner names what is missing).
        from pipeline.core.registry import get_stage

        stage = get_stage(cfg.stage)
        return Dag(f"stage:{stage.name}", (stage,))
    return load_dag(cfg.dag or ("demo" if cfg.dataset.name == "demo" else "preprocess"))


def summary_table(reports: Sequence[StageReport], seconds: float, out: str) -> Table:
    table = Table(title=f"clip2clinic run -> {out}  ({seconds:.1f} s)")
    for col, justify in (
        ("stage", "left"),
        ("status", "left"),
        ("dataset", "left"),
        ("rows", "right"),
        ("rejects", "right"),
        ("seconds", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rep in reports:
        first = True
        for dataset, rows in rep.datasets.items():
            table.add_row(
                rep.stage if first else "",
                rep.status if first else "",
                dataset,
                f"{rows:,}",
                f"{rep.rejected:,}" if first else "",
                f"{rep.seconds:.1f}" if first else "",
            )
            first = False
    return table


def agreement_table(out: str) -> Table | None:
    """Per observation, exact agreement and positive F1 with each official labeler, if computed."""
    from pipeline.core.io import read_dataset
    from pipeline.evaluate.agreement import summary

    try:
        rows = summary(read_dataset(out, "label_agreement"))
    except PipelineError:
        return None
    labelers = sorted({r["labeler"] for r in rows})
    if not labelers:
        return None
    table = Table(title="agreement with the dump's official labels (exact 1/0/-1/blank | positive F1)")
    table.add_column("observation")
    for labeler in labelers:
        table.add_column(labeler, justify="right")
    by_key = {(r["observation"], r["labeler"]): r for r in rows}
    for obs in dict.fromkeys(r["observation"] for r in rows):
        cells = []
        for labeler in labelers:
            r = by_key.get((obs, labeler))
            f1 = "-" if r is None or r["f1_positive"] != r["f1_positive"] else f"{r['f1_positive']:.2f}"
            cells.append("" if r is None else f"{r['agreement']:.1%} | {f1}")
        table.add_row(obs, *cells)
    return table


def evaluation_table(out: str) -> Table | None:
    """The evaluate stage's headline figures per model, when the run has them (local runs)."""
    from pipeline.train.report import summary_rows  # numpy only: no torch

    path = os.path.join(out, "evaluate", "evaluation.json")
    try:
        with open(path) as fh:
            models = json.load(fh)["models"]
    except (OSError, ValueError, KeyError):
        return None

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    table = Table(title=f"evaluation on the test split ({os.path.join(out, 'evaluate', 'evaluation.md')})")
    for col in ("model", "mean AUROC", "I2T R@10", "T2I R@10", "Task A", "Task B", "probe"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m, row in zip(models, summary_rows(models), strict=True):
        ci = m["zero_shot"]["mean"]["ci"]
        auroc = "-" if row["mean AUROC"] is None else f"{row['mean AUROC']:.3f}"
        if row["mean AUROC"] is not None and ci[0] is not None:
            auroc += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        cells = [pct(row[k]) for k in ("I2T R@10", "T2I R@10", "Task A", "Task B", "probe")]
        table.add_row(row["model"], auroc, *cells)
    return table


def check_inputs(dag: Dag, runner: Runner) -> None:
    """Say which inputs no stage of the DAG writes are missing under out (a single-stage run, a
    ``from_run`` DAG) before starting any work."""
    produced = dag.produced
    for stage in dag.stages:
        needed = [d for d in stage.inputs if d not in produced]
        missing = []
        for dataset in needed:
            manifest = runner.store.read_json(runner.store.manifest_path(dataset))
            if not manifest or not manifest.get("complete"):
                missing.append(dataset)
        if missing:
            raise PipelineError(
                "E_INPUT_MISSING",
                f"stage {stage.name!r} needs {', '.join(missing)}, not found complete under {runner.out}. "
                f"Run the stages that write them first, or a DAG that includes them (dag=full).",
            )


def local_threads(cfg: RunConfig) -> int | None:
    """Worker threads of the local cluster a run would start (None for a scheduler's address:
    ask it), so that sizing parts starts no cluster."""
    if cfg.cluster.address:
        return None
    return max(1, cfg.cluster.n_workers * cfg.cluster.threads_per_worker)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, raised once the cluster is closed: what had finished, what was running."""

    def __init__(self, finished: list[StageReport], running: str | None) -> None:
        super().__init__()
        self.finished = finished
        self.running = running


def run(cfg: RunConfig, console: Console | None = None, *, command: str | None = None) -> list[StageReport]:
    """Run the configured DAG or stage; returns one report per stage.

    Takes the run folder's lock first (``command`` is what a second run is told holds it). Raises
    PipelineError (E_RUN_LOCKED when another run holds ``out``), RunInterrupted on Ctrl-C.
    """
    console = console or Console(stderr=True)
    dag = select_dag(cfg)
    if not cfg.stage:
        build_dag(dag.name, [s.name for s in dag.stages], from_run=dag.from_run)  # before any work
    configs = {s.name: cfg.stage_config(s.name) for s in dag.stages}
    runner: Runner | None = None
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        with run_lock(cfg.out, command), lazy_client(cfg.cluster) as holder:
            try:
                progress = RichProgress(console) if cfg.progress and console.is_terminal else None
                with progress or contextlib.nullcontext():
                    # A callable: the cluster starts when a stage first needs it, so a run
                    # with every stage up to date starts none.
                    runner = Runner(
                        cfg.out, holder.get, progress=progress, force=cfg.force, workers=local_threads(cfg)
                    )
                    check_inputs(dag, runner)
                    return runner.run_dag(dag, configs)
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut the cluster's teardown short (orphaned workers).
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                finished, running = (runner.finished, runner.running) if runner else ([], None)
                raise RunInterrupted(finished, running) from None
    finally:
        if signal.getsignal(signal.SIGINT) is not previous_sigint:
            signal.signal(signal.SIGINT, previous_sigint)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """The CLI's log file: ``pipeline`` messages from INFO up (whatever ``log_level`` shows on
    the terminal) and the traceback of an internal error. ``<out>/_logs/run-<UTC>-<pid>.log``,
    or a temporary file when ``out`` is not a local folder."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._file: logging.Handler | None = None
        self._handlers: list[logging.Handler] = []
        self._levels: list[tuple[logging.Logger, int]] = []

    def start(self, cfg: RunConfig, command: str) -> None:
        """Attach the terminal and file handlers. Raises PipelineError for an unknown log_level."""
        level = logging.getLevelNamesMapping().get(cfg.log_level.upper())
        if level is None:
            raise PipelineError(
                "E_CONFIG_VALUE",
                f"unknown log_level {cfg.log_level!r}: choose DEBUG, INFO, WARNING or ERROR.",
            )
        root, pipeline_log = logging.getLogger(), logging.getLogger("pipeline")
        self._levels = [(root, root.level), (pipeline_log, pipeline_log.level)]
        if not root.handlers:  # as logging.basicConfig: leave a host's own handlers alone
            terminal = logging.StreamHandler()
            terminal.setLevel(level)
            terminal.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(terminal)
            self._handlers.append(terminal)
        root.setLevel(level)
        pipeline_log.setLevel(min(level, logging.INFO))
        root_dir = local_root(cfg.out)
        folder = None if root_dir is None else os.path.join(root_dir, "_logs")
        self._open(folder, min(level, logging.INFO))
        if self.path is not None and (
            folder is None or os.path.dirname(self.path) != os.path.abspath(folder)
        ):
            why = "is not a local folder" if folder is None else "cannot be written"
            log.warning("out=%s %s: this run's log is %s", cfg.out, why, self.path)
        log.info("command: %s", command)
        log.info("host %s, pid %d, out %s", socket.gethostname(), os.getpid(), cfg.out)

    def _open(self, folder: str | None, level: int) -> None:
        name = f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.log"
        for where in (folder, os.path.join(tempfile.gettempdir(), "clip2clinic-logs")):
            if where is None:
                continue
            try:
                os.makedirs(where, exist_ok=True)
                handler = logging.FileHandler(os.path.join(where, name), encoding="utf-8")
            except OSError:
                continue  # a read-only out: the temporary folder
            handler.setLevel(level)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logging.getLogger().addHandler(handler)
            self._handlers.append(handler)
            self._file, self.path = handler, handler.baseFilename
            return

    def record_crash(self, exc: BaseException, command: str) -> str:
        """Write ``exc``'s traceback to the log file only (not the terminal); returns its path."""
        if self._file is None:
            self._open(None, logging.INFO)
        if self._file is None or self.path is None:
            return "(none: no folder for one could be written)"
        self._file.handle(
            logging.LogRecord(
                log.name,
                logging.ERROR,
                __file__,
                0,
                "internal error in: %s",
                (command,),
                (type(exc), exc, exc.__traceback__),
            )
        )
        return self.path

    def close(self) -> None:
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        for logger, level in self._levels:
            logger.setLevel(level)


def interrupted_message(exc: RunInterrupted) -> str:
    finished = ", ".join(f"{r.stage} ({r.status})" for r in exc.finished) or "none"
    during = f" during stage {exc.running}" if exc.running else ""
    return (
        f"interrupted{during}; stages finished: {finished}. "
        "Rerun the same command to resume: finished stages and parts are kept."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code: 0 done, 2 a problem the user can fix (a coded
    PipelineError), 130 interrupted (Ctrl-C), 1 an internal error (a bug: the traceback is in the
    run's log file, the terminal gets one line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = shlex.join(["python", "-m", "pipeline.run", *args])
    run_log = RunLog()
    try:
        cfg = compose_run(args)
        run_log.start(cfg, command)
        started = time.perf_counter()
        reports = run(cfg, err, command=command)
        seconds = time.perf_counter() - started
        console = Console()
        console.print(summary_table(reports, seconds, cfg.out))
        if any(r.stage == "agreement" for r in reports) and (table := agreement_table(cfg.out)) is not None:
            console.print(table)
        if any(r.stage == "evaluate" for r in reports) and (table := evaluation_table(cfg.out)) is not None:
            console.print(table)
        log.info("done in %.1f s: %s", seconds, ", ".join(f"{r.stage} {r.status}" for r in reports))
        return 0
    except PipelineError as exc:
        log.info("stopped: [%s] %s", exc.code, exc.message)
        err.print(f"[bold red]error[/] [{exc.code}] {exc.message}", highlight=False)
        return 2
    except RunInterrupted as exc:
        log.info("%s", interrupted_message(exc))
        err.print(interrupted_message(exc), markup=False, highlight=False, soft_wrap=True)
        return 130
    except KeyboardInterrupt:
        err.print(
            "interrupted. Rerun the same command to resume: finished stages and parts are kept.",
            markup=False,
            highlight=False,
        )
        return 130
    except Exception as exc:  # noqa: BLE001 - every other exception is a bug: one line, then the log
        path = run_log.record_crash(exc, command)
        err.print(
            f"internal error ({type(exc).__name__}: {exc}), please report it with the log file {path}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    finally:
        run_log.close()


if __name__ == "__main__":
    sys.exit(main())
