"""A Dask scheduler and workers as their own processes on loopback, for tests that use
``cluster.address`` the way a user's existing cluster is used."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_scheduler() -> tuple[str, subprocess.Popen]:
    """A scheduler on a free loopback port; returns (address, process) at once. Workers and
    clients started on the address retry their connection until the scheduler listens (their
    connect timeouts), so the scheduler's start-up overlaps theirs."""
    port = free_port()
    proc = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return f"tcp://127.0.0.1:{port}", proc


def start_worker(address: str, scratch: Path, *extra: str, nworkers: int = 1) -> subprocess.Popen:
    """``dask worker`` processes (one thread each) with ``extra`` arguments (``--resources GPU=1``)."""
    args = [
        "--nworkers",
        str(nworkers),
        "--nthreads",
        "1",
        "--no-dashboard",
        "--local-directory",
        str(scratch),
    ]
    return subprocess.Popen(
        [DASK, "worker", address, *args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(procs: Iterable[subprocess.Popen]) -> None:
    procs = list(procs)
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
