"""Windows: how the text engine keeps its memory in proportion on absurdly long reports.

A report longer than :data:`WINDOW_CHARS` characters (no real report comes near: MIMIC-CXR's
longest is about 12k, and ingest rejects reports over 100k by default) is read in windows of about
that many characters of whole sentences:

* parse finds the report's sentences as it writes them and turns each window's section and
  sentence rows into Arrow before it finds the next window's;
* extract reads one window of sentences at a time: its Python sentence columns, the engine's
  batch, its spaCy ``Doc`` objects and the mention columns hold one window
  (:func:`sentence_windows`); labels and findings are then folded over the mentions table a few
  thousand rows at a time (:mod:`pipeline.text.labels`).

Windows end on sentence boundaries and every sentence is read on its own in any case, so a
windowed reading is the unwindowed one, row for row; offsets stay offsets into the whole report
text. The output tables then hold one Arrow chunk per window. Every report of a partition with
no longer one takes exactly the path it took before windows existed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Characters per window, and the report length above which windows apply; 0 turns windows off
# (a report of any length is read in one piece). Read at call time: tests lower it.
WINDOW_CHARS = 200_000


def sentence_windows(
    reports: np.ndarray, lengths: np.ndarray, limit: int | None = None
) -> Iterator[tuple[int, int]]:
    """Row ranges ``[a, b)`` covering sentence rows sorted by report, in order.

    ``reports`` holds a report number per row (equal numbers are consecutive), ``lengths`` each
    sentence's characters. The sentences of a report whose total exceeds ``limit`` (default
    :data:`WINDOW_CHARS`) are cut into windows of at most ``limit`` characters (at least one
    sentence each); the rows between such reports form one range each, as a whole partition does
    when no report is long. ``limit`` 0 gives one range.
    """
    n = len(lengths)
    limit = WINDOW_CHARS if limit is None else limit
    if n == 0:
        return
    if limit <= 0:
        yield 0, n
        return
    starts = np.flatnonzero(np.r_[True, reports[1:] != reports[:-1]])
    ends = np.r_[starts[1:], n]
    cum = np.r_[0, np.cumsum(lengths, dtype=np.int64)]
    pending = 0
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if cum[b] - cum[a] <= limit:
            continue
        if a > pending:
            yield pending, a
        yield from _cut(cum, a, b, limit)
        pending = b
    if pending < n:
        yield pending, n


def _cut(cum: np.ndarray, a: int, b: int, limit: int) -> Iterator[tuple[int, int]]:
    """``[a, b)`` cut where the running total would pass ``limit``; a longer row stands alone."""
    while a < b:
        # the last row whose cumulative end stays within limit of the window's start
        stop = int(np.searchsorted(cum, cum[a] + limit, side="right")) - 1
        stop = min(max(stop, a + 1), b)
        yield a, stop
        a = stop
