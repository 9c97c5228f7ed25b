"""Per-metric ring buffers of recent readings, one row per patient (numpy).

A row holds a patient's newest ``capacity`` readings of one metric, sorted by
measured time, left-aligned; empty places have time ``+inf`` (so time masks leave
them out without a count) and NaN values. A row that is full drops its oldest
reading. When a patient measures more often than the capacity covers in a rule's
window, the rule sees the newest ``capacity`` readings: its explanation shows the
count and span it actually used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from rpm.domain import METRICS, Metric

Rows = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]

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
    """The recent readings of one metric for every patient in memory."""

    def __init__(self, metric: Metric, capacity: int, rows: int = 64) -> None:
        self.metric = metric
        self.components = tuple(c.name for c in METRICS[metric].components)
        self.index = {name: i for i, name in enumerate(self.components)}
        self.capacity = capacity
        self.slots: dict[str, int] = {}
        self._free: list[int] = []
        self.times = np.full((rows, capacity), np.inf)
        self.values = np.full((rows, capacity, len(self.components)), np.nan)
        self.count = np.zeros(rows, np.int32)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def nbytes(self) -> int:
        return int(self.times.nbytes + self.values.nbytes + self.count.nbytes)

    def row_of(self, patient_id: str) -> int:
        """The patient's row (-1 when the patient has none)."""
        return self.slots.get(patient_id, -1)

    def rows(self, patient_ids: Sequence[str]) -> Rows:
        """The rows of these patients, allocated on first use."""
        slots = self.slots
        found = list(map(slots.get, patient_ids))
        if None in found:
            for i, row in enumerate(found):
                if row is None:
                    pid = patient_ids[i]  # may repeat in a batch: allocate once
                    found[i] = slots[pid] if pid in slots else self._allocate(pid)
        return np.array(found, np.intp)

    def _allocate(self, patient_id: str) -> int:
        if self._free:
            row = self._free.pop()
        else:
            row = len(self.slots)
            if row >= self.times.shape[0]:
                self._grow()
        self.slots[patient_id] = row
        return row

    def _grow(self) -> None:
        n = self.times.shape[0]
        self.times = np.concatenate([self.times, np.full((n, self.capacity), np.inf)])
        self.values = np.concatenate([self.values, np.full_like(self.values, np.nan)])
        self.count = np.concatenate([self.count, np.zeros(n, np.int32)])

    def release(self, patient_ids: Iterable[str]) -> None:
        for pid in patient_ids:
            row = self.slots.pop(pid, None)
            if row is not None:
                self.times[row] = np.inf
                self.values[row] = np.nan
                self.count[row] = 0
                self._free.append(row)

    def newest(self, rows: Rows) -> F64:
        """Time of each row's newest reading (-inf for an empty row)."""
        n = self.count[rows]
        t = self.times[rows, np.maximum(n - 1, 0)]
        return np.where(n > 0, t, -np.inf)

    def newest_of(self, row: int) -> float:
        """Time of the row's newest reading (-inf for an empty row)."""
        n = int(self.count[row])
        return float(self.times[row, n - 1]) if n > 0 else -math.inf

    def append(self, rows: Rows, ts: F64, values: F64) -> None:
        """Add readings (any order, a row may repeat); each row stays sorted by time."""
        if len(rows) == 0:
            return
        for r, t, v in _rounds(rows, ts, values):
            self._append_unique(r, t, v)

    def _append_unique(self, rows: Rows, ts: F64, values: F64) -> None:
        full = self.count[rows] == self.capacity
        if full.any():
            # A full row keeps its newest readings: one older than all of them is not added.
            keep = ~full | (ts >= self.times[rows, 0])
            rows, ts, values, full = rows[keep], ts[keep], values[keep], full[keep]
            fr = rows[full]
            self.times[fr, :-1] = self.times[fr, 1:]
            self.values[fr, :-1] = self.values[fr, 1:]
            self.count[fr] -= 1
        pos = self.count[rows]
        previous = np.where(pos > 0, self.times[rows, np.maximum(pos - 1, 0)], -np.inf)
        self.times[rows, pos] = ts
        self.values[rows, pos] = values
        self.count[rows] = pos + 1
        late = ts < previous
        if late.any():
            lr = rows[late]
            order = np.argsort(self.times[lr], axis=1, kind="stable")
            self.times[lr] = np.take_along_axis(self.times[lr], order, axis=1)
            self.values[lr] = np.take_along_axis(self.values[lr], order[:, :, None], axis=1)


def _rounds(rows: Rows, ts: F64, values: F64) -> Iterable[tuple[Rows, F64, F64]]:
    """Split readings into rounds in which every row appears once (oldest first)."""
    order = np.lexsort((ts, rows))
    r = rows[order]
    first = np.ones(len(r), np.bool_)
    first[1:] = r[1:] != r[:-1]
    if first.all():
        yield rows, ts, values
        return
    start = np.maximum.accumulate(np.where(first, np.arange(len(r)), 0))
    rank = np.arange(len(r)) - start
    for k in range(int(rank.max()) + 1):
        pick = order[rank == k]
        yield rows[pick], ts[pick], values[pick]
