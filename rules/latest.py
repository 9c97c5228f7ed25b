"""The latest value of another metric at each reading's time (what a composite score reads)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rpm.domain import Metric

from .buffers import F64, MetricBuffer, Rows
from .kernels import latest_at


def latest(
    buf: MetricBuffer | None,
    rows_in: Callable[[MetricBuffer], Rows],
    ts: F64,
    component: str,
    fresh: float,
) -> tuple[F64, F64]:
    """(value, time) of each reading's patient's newest reading of ``component`` in
    ``buf`` at or before the reading and no older than ``fresh`` seconds (NaN where none:
    no such reading, no row, or no buffer of that metric)."""
    value = np.full(len(ts), np.nan)
    when = np.full(len(ts), np.nan)
    if buf is not None:
        comp = buf.index[component]
        rows = rows_in(buf)
        latest_at(buf.times, buf.values, buf.count, rows, ts, comp, fresh, value, when)
    return value, when


def rows_in_of(numbers: Rows) -> Callable[[MetricBuffer], Rows]:
    """The rows of these patients (by number) in any buffer (-1: none), each buffer's
    looked up once."""
    found: dict[Metric, Rows] = {}

    def rows_in(buf: MetricBuffer) -> Rows:
        rows = found.get(buf.metric)
        if rows is None:
            rows = found[buf.metric] = buf.rows_of(numbers)
        return rows

    return rows_in
