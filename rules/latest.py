"""The latest value of another metric at each reading's time (what a composite score reads)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rpm.domain import Metric

from .buffers import F64, MetricBuffer, Rows

# The newest places of a row read for "latest": a fresh reading of another metric is one
# of the last few (a composite's freshness is hours; rows hold days). Rows where older
# places could still be fresh are read whole (late readings, frequent measurements).
LAST = 8


@dataclass(frozen=True, slots=True)
class _Places:
    """Some readings' places in a buffer: rows, columns, and which are in time."""

    at: Rows  # positions among the readings
    rows: Rows  # (m, 1) their patients' rows
    cols: Rows  # (m, w) the places read
    t: F64  # (m, w) their times
    ok: npt.NDArray[np.bool_]  # (m, w) at or before the reading, fresh enough


@dataclass(frozen=True, slots=True)
class InTime:
    """Places of a buffer's rows in time for each reading: at or before it, fresh enough."""

    n: int
    parts: tuple[_Places, ...]  # the rows read by their newest places, the rows read whole


def _places(buf: MetricBuffer, at: Rows, r: Rows, cols: Rows, tp: F64, fresh: float) -> _Places:
    rows = r[:, None]
    t = buf.times[rows, cols]
    ok = (t <= tp[:, None]) & (t >= (tp - fresh)[:, None])
    return _Places(at, rows, cols, t, ok)


def in_time(buf: MetricBuffer, rows: Rows, fresh: float, ts: F64) -> InTime:
    at = np.flatnonzero(rows >= 0)
    if not len(at):
        return InTime(len(rows), ())
    r, tp = rows[at], ts[at]
    count = buf.count[r]
    k = min(LAST, buf.capacity)
    cols = np.maximum(count - k, 0)[:, None] + np.arange(k)
    last = _places(buf, at, r, cols, tp, fresh)
    # places before the first read are older still: none is in time when it is too old
    whole = (count > k) & (last.t[:, 0] >= tp - fresh)
    if not whole.any():
        return InTime(len(rows), (last,))
    part = ~whole
    last = _Places(at[part], last.rows[part], cols[part], last.t[part], last.ok[part])
    w = np.flatnonzero(whole)
    width = int(count[w].max())  # the places after are empty in every row
    cols = np.broadcast_to(np.arange(width), (len(w), width))
    full = _places(buf, at[w], r[w], cols, tp[w], fresh)
    return InTime(len(rows), (last, full))


def latest(buf: MetricBuffer, at: InTime, component: str) -> tuple[F64, F64]:
    """(value, time) of each row's newest reading of ``component`` at or before the
    reading and no older than ``fresh`` seconds (NaN where none; row -1: no row)."""
    value = np.full(at.n, np.nan)
    when = np.full(at.n, np.nan)
    c = buf.index[component]
    for p in at.parts:
        v = buf.values[p.rows, p.cols, c]
        ok = p.ok & ~np.isnan(v)
        pick = np.where(ok, p.t, -np.inf).argmax(axis=1)
        has = ok.any(axis=1)
        k = np.arange(len(pick))
        value[p.at] = np.where(has, v[k, pick], np.nan)
        when[p.at] = np.where(has, p.t[k, pick], np.nan)
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
