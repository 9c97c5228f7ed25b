"""The latest value of another metric at each reading's time (what a composite score reads)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rpm.domain import Metric

from .buffers import F64, MetricBuffer, Rows


@dataclass(frozen=True, slots=True)
class InTime:
    """Places of a buffer's rows in time for each reading: at or before it, fresh enough."""

    n: int
    present: npt.NDArray[np.bool_]  # the reading's patient has a row
    rows: Rows  # the rows of those present
    ok: npt.NDArray[np.bool_] | None  # (present, width) place in time; None: none present
    width: int


def in_time(buf: MetricBuffer, rows: Rows, fresh: float, ts: F64) -> InTime:
    present = rows >= 0
    if not present.any():
        return InTime(len(rows), present, rows, None, 0)
    r = rows[present]
    width = int(buf.count[r].max(initial=1))  # the places after are empty in every row
    t = buf.times[r, :width]
    tp = ts[present]
    ok = (t <= tp[:, None]) & (t >= (tp - fresh)[:, None])
    return InTime(len(rows), present, r, ok, width)


def latest(buf: MetricBuffer, at: InTime, component: str) -> tuple[F64, F64]:
    """(value, time) of each row's newest reading of ``component`` at or before the
    reading and no older than ``fresh`` seconds (NaN where none; row -1: no row)."""
    value = np.full(at.n, np.nan)
    when = np.full(at.n, np.nan)
    if at.ok is None:
        return value, when
    r, width = at.rows, at.width
    t = buf.times[r, :width]
    v = buf.values[r, :width, buf.index[component]]
    ok = at.ok & ~np.isnan(v)
    pick = np.where(ok, t, -np.inf).argmax(axis=1)
    has = ok.any(axis=1)
    k = np.arange(len(r))
    value[at.present] = np.where(has, v[k, pick], np.nan)
    when[at.present] = np.where(has, t[k, pick], np.nan)
    return value, when


def rows_in_of(patients: Sequence[str]) -> Callable[[MetricBuffer], Rows]:
    """The patients' rows in any buffer (-1: none), each buffer's looked up once."""
    found: dict[Metric, Rows] = {}

    def rows_in(buf: MetricBuffer) -> Rows:
        rows = found.get(buf.metric)
        if rows is None:
            rows = found[buf.metric] = np.fromiter(
                map(buf.slots.get, patients, itertools.repeat(-1)), np.intp, len(patients)
            )
        return rows

    return rows_in
