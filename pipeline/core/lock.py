"""One writer per run folder: an exclusive lock on ``<out>/_state/run.lock`` for a run's lifetime.

The lock is ``fcntl.flock`` on that file: the kernel releases it when the holding process ends in
any way (exit, crash, ``kill -9``), so a lock left by a dead run is simply free and the next run
takes it over; nothing needs cleaning up by hand. The JSON inside (host, pid, start time, command
line) only serves the message a second run prints. Works on local disks; on NFS, Linux maps flock to
NFS byte-range locks. A non-local ``out`` (an fsspec URL) is not locked: a warning says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fsspec

from pipeline.core.errors import PipelineError
from pipeline.core.io import STATE_DIR

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


def local_root(out: str) -> str | None:
    """The local folder of ``out`` (a path or a ``file://`` URL), or None for any other fsspec URL."""
    fs, root = fsspec.core.url_to_fs(str(out))
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return root if "file" in protocols or "local" in protocols else None


def lock_path(out: str) -> str | None:
    root = local_root(out)
    return None if root is None else os.path.join(root, STATE_DIR, LOCK_FILE)


@contextlib.contextmanager
def run_lock(out: str, command: str | None = None) -> Iterator[str | None]:
    """Hold the lock of run folder ``out`` for the block; yields the lock file's path (None when
    ``out`` is not local and no lock is taken).

    Raises PipelineError(E_RUN_LOCKED) at once, without waiting, when another process holds it.
    """
    path = lock_path(out)
    if path is None:
        log.warning(
            "out=%s is not a local folder: no run lock is taken, so make sure no other run writes "
            "there at the same time.",
            out,
        )
        yield None
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = _acquire(path)
    if fd is None:
        yield None
        return
    try:
        stale = _read_holder(fd)
        if stale:
            log.info(
                "took over the run lock left by pid %s on %s (no longer held)",
                stale.get("pid"),
                stale.get("host"),
            )
        _write_holder(fd, command)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # a finished run leaves no holder to name
    finally:
        os.close(fd)  # releases the lock


def _acquire(path: str) -> int | None:
    """The locked file's descriptor; None where the filesystem cannot lock (warned)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                # ENOLCK, EOPNOTSUPP: some network filesystems; refusing to run would be worse.
                os.close(fd)
                log.warning("cannot lock %s (%s): running without a run lock.", path, exc)
                return None
            holder = _read_holder(fd, wait=True)
            os.close(fd)
            raise PipelineError("E_RUN_LOCKED", _in_use(holder, path)) from None
        # Someone deleted the file between our open and flock: our lock is on an orphan inode
        # that a third run would not see, so start again on the file now at ``path``.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_holder(fd: int, *, wait: bool = False) -> dict[str, Any]:
    """The holder's JSON, {} if none. ``wait``: the holder may have the lock but not have written
    its details yet, so give it a moment before saying "unknown"."""
    for _ in range(20 if wait else 1):
        raw = os.pread(fd, 65536, 0)
        if raw.strip():
            try:
                holder = json.loads(raw)
            except ValueError:
                holder = None
            if isinstance(holder, dict):
                return holder
        if wait:
            time.sleep(0.05)
    return {}


def _write_holder(fd: int, command: str | None) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or shlex.join([sys.executable, *sys.argv]),
    }
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _in_use(holder: dict[str, Any], path: str) -> str:
    if not holder:
        return f"run folder in use by another process (lock {path}): wait for it or use another out=."
    return (
        f"run folder in use by host {holder.get('host', '?')}, pid {holder.get('pid', '?')} "
        f"since {holder.get('started', '?')} (command {holder.get('command', '?')}): "
        "wait for it or use another out=."
    )
