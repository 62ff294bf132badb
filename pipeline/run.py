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

import json
import logging
import os
import sys
import time
from collections.abc import Sequence

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

from pipeline.core.config import RunConfig, compose_run
from pipeline.core.dag import Dag, build_dag, load_dag
from pipeline.core.errors import PipelineError
from pipeline.core.runner import Runner, StageReport, dask_client

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


def run(cfg: RunConfig, console: Console | None = None) -> list[StageReport]:
    """Run the configured DAG or stage; returns one report per stage. Raises PipelineError."""
    console = console or Console(stderr=True)
    dag = select_dag(cfg)
    if not cfg.stage:
        build_dag(dag.name, [s.name for s in dag.stages], from_run=dag.from_run)  # before any work
    configs = {s.name: cfg.stage_config(s.name) for s in dag.stages}
    with dask_client(cfg.cluster) as client:
        if cfg.progress and console.is_terminal:
            with RichProgress(console) as progress:
                runner = Runner(cfg.out, client, progress=progress, force=cfg.force)
                check_inputs(dag, runner)
                return runner.run_dag(dag, configs)
        runner = Runner(cfg.out, client, force=cfg.force)
        check_inputs(dag, runner)
        return runner.run_dag(dag, configs)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 for a structural problem)."""
    args = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = compose_run(args)
        logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        started = time.perf_counter()
        reports = run(cfg, err)
    except PipelineError as exc:
        err.print(f"[bold red]error[/] [{exc.code}] {exc.message}", highlight=False)
        return 2
    console = Console()
    console.print(summary_table(reports, time.perf_counter() - started, cfg.out))
    if any(r.stage == "agreement" for r in reports) and (table := agreement_table(cfg.out)) is not None:
        console.print(table)
    if any(r.stage == "evaluate" for r in reports) and (table := evaluation_table(cfg.out)) is not None:
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
