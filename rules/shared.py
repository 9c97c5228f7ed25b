"""What the rules of one metric group read, gathered once for the group on first use.

Every rule evaluated for a batch's readings of one metric reads the same history rows
and the same latest values of other metrics; a rule that only some of the readings
hold gets those of its readings (``part``), taken from the group's arrays, which are
small and contiguous, instead of reaching into the ring buffers again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from rpm.domain import Metric

from .buffers import F64, MetricBuffer, Rows
from .kinds import Window
from .latest import InTime, in_time, latest


class Shared:
    """A metric group's history and latest values of other metrics, computed lazily."""

    __slots__ = ("_buf", "_buffers", "_history", "_in", "_latest", "_rows", "_rows_in", "_ts")

    def __init__(
        self,
        buffers: Mapping[Metric, MetricBuffer],
        buf: MetricBuffer,
        rows: Rows,
        ts: F64,
        rows_in: Callable[[MetricBuffer], Rows],
    ) -> None:
        self._buffers = buffers
        self._buf = buf
        self._rows = rows
        self._ts = ts
        self._rows_in = rows_in
        self._history: tuple[F64, F64] | None = None
        # (metric, fresh) -> places in time, shared by the components read from the metric
        self._in: dict[tuple[Metric, float], InTime] = {}
        self._latest: dict[tuple[Metric, str, float], tuple[F64, F64]] = {}

    def history(self) -> tuple[F64, F64]:
        if self._history is None:
            self._history = self._buf.history(self._rows)
        return self._history

    def latest_of(self, other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
        key = (other, component, fresh)
        found = self._latest.get(key)
        if found is None:
            found = self._latest[key] = self._find_latest(other, component, fresh)
        return found

    def _find_latest(self, other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
        buf = self._buffers.get(other)
        n = len(self._ts)
        if buf is None:
            return np.full(n, np.nan), np.full(n, np.nan)
        at = self._in.get((other, fresh))
        if at is None:
            at = self._in[other, fresh] = in_time(buf, self._rows_in(buf), fresh, self._ts)
        return latest(buf, at, component)

    def window(self, metric: Metric, current: F64) -> Window:
        """The window of every reading of the group."""
        return Window(metric, self._ts, current, self.history, self._buf.index, self.latest_of)

    def part(self, metric: Metric, current: F64, sel: Rows) -> Window:
        """The window of the readings ``sel`` of the group."""

        def gather() -> tuple[F64, F64]:
            times, values = self.history()
            return times[sel], values[sel]

        def latest_of(other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
            value, when = self.latest_of(other, component, fresh)
            return value[sel], when[sel]

        return Window(metric, self._ts[sel], current[sel], gather, self._buf.index, latest_of)
