"""Where the work runs: a Dask client on an existing scheduler or on a fresh LocalCluster."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


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
            # dask_setup below runs in each worker process, after any preload the user configured
            preload=[*dask.config.get("distributed.worker.preload", []), __name__],
        )
    with local, Client(local) as client:
        try:
            yield client
        finally:
            _stop_heartbeats(client)


def _stop_heartbeats(client: Client) -> None:
    """Close order, step one: workers stop heartbeating, then the client closes, then the
    cluster (workers, scheduler last). Otherwise a worker still closing when the scheduler goes
    (seen about once in 50 runs on a loaded 2-core machine) logs "Failed to communicate with
    scheduler during heartbeat" with a traceback, on a run that succeeded."""
    try:
        client.run(_stop_heartbeat, on_error="ignore", callback_timeout=10)
    except Exception as exc:  # noqa: BLE001 - teardown goes on; the worst case is that log line
        log.debug("could not stop worker heartbeats before closing: %s", exc)


def _stop_heartbeat(dask_worker: Any) -> None:
    dask_worker.periodic_callbacks["heartbeat"].stop()


def dask_setup(worker: Any) -> None:
    """Worker preload: ignore SIGINT. Ctrl-C reaches the whole process group; the client process
    alone handles it and closes the cluster, instead of every worker printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LazyClient:
    """A client started on the first :meth:`get`, so a run with nothing to do starts no cluster."""

    def __init__(self, cluster: ClusterConfig, stack: contextlib.ExitStack) -> None:
        self.cluster = cluster
        self._stack = stack
        self._client: Client | None = None

    def get(self) -> Client:
        """The client, starting the cluster if needed. Raises PipelineError(E_CLUSTER)."""
        if self._client is None:
            self._client = self._stack.enter_context(dask_client(self.cluster))
        return self._client


@contextlib.contextmanager
def lazy_client(cluster: ClusterConfig) -> Iterator[LazyClient]:
    """A :class:`LazyClient`; on exit, closes its client and cluster if they were started."""
    with contextlib.ExitStack() as stack:
        yield LazyClient(cluster, stack)
