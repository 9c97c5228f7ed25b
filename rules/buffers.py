"""Per-metric ring buffers of recent readings, one row per patient (numpy).

A row holds a patient's newest ``capacity`` readings of one metric, sorted by
measured time, left-aligned; empty places have time ``+inf`` (so time masks leave
them out without a count) and NaN values. A row that is full drops its oldest
reading. When a patient measures more often than the capacity covers in a rule's
window, the rule sees the newest ``capacity`` readings: its explanation shows the
count and span it actually used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from rpm.domain import METRICS, Metric, Reading

from .kernels import insert_sorted

Rows = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]

_VALUES = attrgetter("values")
_NAN = itertools.repeat(math.nan)

# Enough for the default programs' windows at typical home-measurement rates:
# BP twice a day for 14 days (trend), SpO2 up to 4 a day for 14 days (baseline),
# daily weights for 7 days with re-weighs. Configurable: ``RPM_RULE_BUFFER_CAPACITY``.
DEFAULT_CAPACITY: dict[Metric, int] = {
    Metric.BLOOD_PRESSURE: 48,
    Metric.SPO2: 64,
    Metric.WEIGHT: 32,
    Metric.GLUCOSE: 16,
    Metric.HEART_RATE: 16,
    Metric.BODY_TEMPERATURE: 16,
    Metric.RESPIRATORY_RATE: 16,
}


class MetricBuffer:
    """The recent readings of one metric for every patient in memory.

    Patients are known here by their number (``Engine`` numbers the patients it holds,
    densely): ``row_at[number]`` is the patient's row, -1 for none, so a batch's rows
    are one numpy gather, not a dictionary lookup per reading.
    """

    def __init__(self, metric: Metric, capacity: int, rows: int = 64) -> None:
        self.metric = metric
        self.components = tuple(c.name for c in METRICS[metric].components)
        self.index = {name: i for i, name in enumerate(self.components)}
        self.capacity = capacity
        self.row_at = np.full(rows, -1, np.intp)
        self._used = 0
        self._free: list[int] = []
        self.times = np.full((rows, capacity), np.inf)
        self.values = np.full((rows, capacity, len(self.components)), np.nan)
        self.count = np.zeros(rows, np.int32)

    def __len__(self) -> int:
        """Patients with a row."""
        return self._used

    @property
    def nbytes(self) -> int:
        return int(self.times.nbytes + self.values.nbytes + self.count.nbytes + self.row_at.nbytes)

    def row_of(self, number: int) -> int:
        """The patient's row (-1 when the patient has none)."""
        return int(self.row_at[number]) if 0 <= number < len(self.row_at) else -1

    def rows_of(self, numbers: Rows) -> Rows:
        """The rows of these patients, -1 where a patient has none (nothing allocated)."""
        out = np.full(len(numbers), -1, np.intp)
        inside = numbers < len(self.row_at)
        out[inside] = self.row_at[numbers[inside]]
        return out

    def rows(self, numbers: Rows) -> Rows:
        """The rows of these patients (a number may repeat), allocated on first use."""
        if len(numbers) and int(numbers.max()) >= len(self.row_at):
            grown = np.full(max(2 * len(self.row_at), int(numbers.max()) + 1), -1, np.intp)
            grown[: len(self.row_at)] = self.row_at
            self.row_at = grown
        found = self.row_at[numbers]
        new = found < 0
        if new.any():
            for number in np.unique(numbers[new]).tolist():
                self.row_at[number] = self._allocate()
            found = self.row_at[numbers]
        return found

    def _allocate(self) -> int:
        self._used += 1
        if self._free:
            return self._free.pop()
        row = self._used - 1
        if row >= self.times.shape[0]:
            self._grow()
        return row

    def _grow(self) -> None:
        n = self.times.shape[0]
        self.times = np.concatenate([self.times, np.full((n, self.capacity), np.inf)])
        self.values = np.concatenate([self.values, np.full_like(self.values, np.nan)])
        self.count = np.concatenate([self.count, np.zeros(n, np.int32)])

    def release(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            row = self.row_of(number)
            if row >= 0:
                self.row_at[number] = -1
                self.times[row] = np.inf
                self.values[row] = np.nan
                self.count[row] = 0
                self._free.append(row)
                self._used -= 1

    def newest(self, rows: Rows) -> F64:
        """Time of each row's newest reading (-inf for an empty row)."""
        n = self.count[rows]
        t = self.times[rows, np.maximum(n - 1, 0)]
        return np.where(n > 0, t, -np.inf)

    def newest_of(self, row: int) -> float:
        """Time of the row's newest reading (-inf for an empty row)."""
        n = int(self.count[row])
        return float(self.times[row, n - 1]) if n > 0 else -math.inf

    def values_of(self, readings: Sequence[Reading]) -> F64:
        """The readings' values, (B, K) in the buffer's component order, NaN where absent."""
        values = list(map(_VALUES, readings))
        out = np.empty((len(values), len(self.components)))
        for k, c in enumerate(self.components):
            try:  # dict.get mapped in C over plain dicts, the usual case
                column = map(dict.get, values, itertools.repeat(c), _NAN)
                out[:, k] = np.fromiter(column, np.float64, len(values))
            except TypeError:  # another Mapping: ``None`` from dict.get is not a float either
                out[:, k] = [v.get(c, math.nan) for v in values]
        return out

    def append(self, rows: Rows, ts: F64, values: F64) -> tuple[F64, npt.NDArray[np.bool_]]:
        """Add readings (any order, a row may repeat); each row stays sorted by time.

        A full row drops its oldest reading for a newer one; a reading older than all a
        full row holds is not added. Readings of one time keep their arrival order.
        Returns, per reading, its row's newest time before these readings (-inf: none)
        and whether it is its row's newest reading now.
        """
        before = np.empty(len(rows))
        newest = np.empty(len(rows), np.bool_)
        if len(rows):
            order = np.lexsort((ts, rows)) if len(rows) > 1 else np.zeros(1, np.intp)
            new = np.ascontiguousarray(values)
            insert_sorted(self.times, self.values, self.count, rows, ts, new, order, before, newest)
        return before, newest
