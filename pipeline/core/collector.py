"""The cyclic garbage collector, paused while a part's work runs.

A stage's part makes hundreds of thousands of small objects (rows, tuples, strings) and frees them
by reference counting: no stage makes reference cycles (a collection after each map stage's part
of a 227,835-report run finds none; tests/test_demo_dag.py keeps that). Yet
their allocations trigger the collector over and over, and each full pass re-reads everything
the worker holds (the text engine's memo, the rewrite caches): 14-60% of a part's time in
parse, graph, reread, hardneg and hardneg_rewrite. So map and source parts, and the graph
embedding's tasks, run with it paused; what a part leaves alive is looked at by the collector's
next pass after the part, as usual. (similarity's tasks are numpy through and through: nothing
to gain there.)
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, restored as it was on exit (nests; also a decorator)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
