"""What the rules of one metric group read, gathered once for the group on first use.

Every rule evaluated for a batch's readings of one metric reads the same history rows
(in the ring buffer, in place) and the same latest values of other metrics; a rule
that only some of the readings hold gets those of its readings (``part``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rpm.domain import Metric

from .buffers import F64, MetricBuffer, Rows
from .kinds import Window
from .kinds.base import Store
from .latest import latest


class Shared:
    """A metric group's history and latest values of other metrics, computed lazily."""

    __slots__ = ("_buf", "_buffers", "_latest", "_rows", "_rows_in", "_ts")

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
        self._latest: dict[tuple[Metric, str, float], tuple[F64, F64]] = {}

    def history(self) -> Store:
        return self._buf.times, self._buf.values, self._rows

    def latest_of(self, other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
        key = (other, component, fresh)
        found = self._latest.get(key)
        if found is None:
            buf = self._buffers.get(other)
            found = self._latest[key] = latest(buf, self._rows_in, self._ts, component, fresh)
        return found

    def window(self, metric: Metric, current: F64) -> Window:
        """The window of every reading of the group."""
        return Window(metric, self._ts, current, self.history, self._buf.index, self.latest_of)

    def part(self, metric: Metric, current: F64, sel: Rows) -> Window:
        """The window of the readings ``sel`` of the group."""

        def gather() -> Store:
            return self._buf.times, self._buf.values, self._rows[sel]

        def latest_of(other: Metric, component: str, fresh: float) -> tuple[F64, F64]:
            value, when = self.latest_of(other, component, fresh)
            return value[sel], when[sel]

        return Window(metric, self._ts[sel], current[sel], gather, self._buf.index, latest_of)
