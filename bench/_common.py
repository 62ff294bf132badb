"""Shared helpers for the benchmark scripts: peak-RSS sampling and a figures table."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

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
