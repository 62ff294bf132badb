"""Where the work runs: a Dask client on an existing scheduler or on a fresh LocalCluster."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import dask
from distributed import Client, LocalCluster

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class ClusterConfig:
    """Where the work runs. ``address`` (tcp://host:8786) uses an existing scheduler."""

    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1  # spaCy and pyarrow work is per process; threads only contend
    memory_limit: str = "auto"  # per worker, Dask syntax ("4GiB"); "auto" splits the machine
    dashboard: bool = False
    # how long to keep retrying a scheduler at ``address`` that does not answer (Dask syntax)
    connect_timeout: str = "20s"


@contextlib.contextmanager
def dask_client(cluster: ClusterConfig) -> Iterator[Client]:
    """A client on ``cluster.address`` or on a fresh LocalCluster of worker processes."""
    if cluster.address:
        try:
            client = Client(cluster.address, timeout=cluster.connect_timeout)
        except OSError as exc:
            raise PipelineError(
                "E_CLUSTER",
                f"cannot reach the Dask scheduler at {cluster.address}: {exc}. "
                "Start one (`dask scheduler`) or drop cluster.address to use a local cluster.",
            ) from exc
        with client:
            yield client
        return
    # Dask lowers glibc's trim threshold in workers, which makes every large numpy temporary a
    # fresh mmap; a 64 MiB mmap threshold keeps block-wise matrix work at plain-process speed.
    environ = {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        "MALLOC_MMAP_THRESHOLD_": 67108864,
    }
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        local = LocalCluster(
            n_workers=cluster.n_workers,
            threads_per_worker=cluster.threads_per_worker,
            processes=True,
            memory_limit=cluster.memory_limit,
            # The scheduler's HTTP server starts even without a dashboard: a random port avoids
            # clashing with another cluster on 8787.
            dashboard_address=":0",
            scheduler_kwargs={"dashboard": cluster.dashboard},
            silence_logs=logging.ERROR,
        )
    with local, Client(local) as client:
        yield client
