"""Shared helpers for the benchmark scripts: peak-RSS sampling and a figures table."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table


class PeakRSS:
    """Samples the RSS of this process (and optionally its children) every 50 ms."""

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        proc = psutil.Process()
        rss = proc.memory_info().rss
        if self.children:
            for child in proc.children(recursive=True):
                with suppress(psutil.Error):
                    rss += child.memory_info().rss
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


class ChildPeakRSS(PeakRSS):
    """Peak RSS of the largest single descendant process (a Dask worker) of ``pid``, sampled
    every 50 ms: the same figure for any version of the pipeline, whatever it records itself."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def _sample(self) -> int:
        with suppress(psutil.Error):
            sizes = []
            for child in psutil.Process(self.pid).children(recursive=True):
                with suppress(psutil.Error):
                    sizes.append(child.memory_info().rss)
            return max(sizes, default=0)
        return 0


@contextmanager
def git_tree(rev: str, repo: Path) -> Iterator[Path]:
    """A detached worktree of ``repo`` at ``rev`` (removed afterwards): an earlier version of the
    pipeline to run beside this one, in the same run of a benchmark."""
    parent = Path(tempfile.mkdtemp(prefix="bench-before-"))
    path = parent / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), rev], cwd=repo, check=True, capture_output=True
    )
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, check=False)
        shutil.rmtree(parent, ignore_errors=True)


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.perf_counter()
    yield box
    box["seconds"] = time.perf_counter() - start


def worker_peak_rss(client) -> dict[str, int]:
    """Peak RSS of each Dask worker process since it started (Linux ru_maxrss)."""

    def peak() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    return client.run(peak)


def print_figures(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def demo_text_run(work: Path, n_reports: int, workers: int) -> tuple[Path, float]:
    """Generate a demo dump of ``n_reports`` under ``work`` and run ingest, parse, extract on it
    (profile=full: parts of 2,000 reports, as at MIMIC scale); returns (run folder, generation s)."""
    from pipeline.core.config import compose_run
    from pipeline.core.registry import get_stage
    from pipeline.core.runner import Runner, dask_client
    from pipeline.demo import generate_demo_dump

    dump, out = work / "dump", work / "demo"
    with timed() as gen:
        generate_demo_dump(dump, n_reports=n_reports, seed=0, dicom_fraction=0.0)
    cfg = compose_run(
        [
            "dataset=mimic_cxr",
            "profile=full",
            f"dataset.root={dump}",
            f"out={out}",
            f"cluster.n_workers={workers}",
        ]
    )
    with dask_client(cfg.cluster) as client:
        runner = Runner(cfg.out, client)
        for name in ("ingest", "parse", "extract"):
            runner.run_stage(get_stage(name), cfg.stage_config(name))
    return out, gen["seconds"]
