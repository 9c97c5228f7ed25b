"""The rule kinds' inner loops, compiled (numba): one pass over each reading's history.

A kind's ``evaluate`` stays a pure function of its ``Window``; what it computes per
reading from the reading's history row (an extreme, a fit, a median, a count of
breaching readings, the latest value of another metric) is one of these loops. They
read the ring buffers in place: reading ``i``'s history is row ``rows[i]`` of ``times``
(R, C) and ``values`` (R, C, K), so nothing is copied and each kind costs one call per
batch instead of a few dozen numpy passes over padded (B, C) arrays.

A row's finite places are in time order, but not every place after them is empty:
re-evaluating after a late reading hides the batch's readings by giving them time ``+inf``
where they stand (``rules.late``). So the loops test every place and do not stop at the
first ``+inf``; only ``latest_at``, which reads the buffers themselves (``count`` places
used), stops early.

A comparison with NaN is false, as in numpy: a missing value meets no condition.

Offers the loops by what they work on: ``conditions`` (tier levels, breaching counts and
runs), ``windows`` (extreme, least squares, median and MAD), ``buffers`` (insert, latest
value), ``verdicts`` (change, trend, baseline, score bands); and ``warm_up``.

Compiled on first use and cached on disk by numba (``__pycache__`` beside each module, or
``NUMBA_CACHE_DIR``), so a process pays the compilation once per machine. Where numba
finds no writable place, the loops are compiled in each process (a warning says so,
``jit``). Numba's cache checks only the file of the loop it loads, so a loop that calls
another keeps it in its own module.
"""

from __future__ import annotations

import math

import numpy as np

from .buffers import insert_sorted, latest_at
from .conditions import OP_CODES, breaching_count, breaching_run, tier_levels, tier_levels_at
from .verdicts import baseline_verdict, change_verdict, score_bands, trend_verdict
from .windows import least_squares, robust_center, window_extreme

__all__ = [
    "OP_CODES",
    "baseline_verdict",
    "breaching_count",
    "breaching_run",
    "change_verdict",
    "insert_sorted",
    "latest_at",
    "least_squares",
    "robust_center",
    "score_bands",
    "tier_levels",
    "tier_levels_at",
    "trend_verdict",
    "warm_up",
    "window_extreme",
]

_warm = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every loop for the types the kinds pass, so
    the first batch a server evaluates does not pay for it. Once per process."""
    global _warm
    if _warm:
        return
    times = np.array([[0.0, 1.0, math.inf]])
    values = np.zeros((1, 3, 2))
    count = np.array([2], np.int32)
    rows = np.zeros(1, np.intp)
    ts = np.ones(1)
    comp = np.zeros(1, np.intp)
    op = np.zeros(1, np.int64)
    limits = np.zeros((1, 1))
    f1, f2, f3, f4 = np.empty(1), np.empty(1), np.empty(1), np.empty(1)
    tier_levels(values[0], comp, op, limits, np.ones(1, np.int8), np.empty(1, np.int8))
    at = np.empty(1, np.intp)
    tier_levels_at(values[0], comp, op, limits, np.ones(1, np.int8), np.empty(1, np.int8), at)
    breaching_count(times, values, rows, ts, comp, op, limits, 2, f1, f2)
    breaching_run(times, values, rows, ts, comp, op, limits, f1)
    window_extreme(times, values, rows, ts, 0, 1.0, True, f1, f2)
    least_squares(times, values, rows, ts, 0, 1.0, 1.0, f1, f2, f3, f4)
    robust_center(times, values, rows, ts, 0, 1.0, 0.0, 3, f1, f2, f3)
    latest_at(times, values, count, rows, ts, 0, 1.0, f1, f2)
    score_bands(limits, limits, limits, limits, limits.copy(), f1, f2, f3)
    # A reading's own value is a column of its (B, K) values: contiguous when K is 1,
    # strided otherwise. Both layouts, for the verdicts.
    for now in (np.zeros(2), np.zeros((2, 2))[:, 0]):
        g1, g2, g3, g4 = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2)
        level = np.empty(2, np.int8)
        one = np.zeros(1)
        change_verdict(now, g1, True, one, one, True, True, 1e-9, 2, level, g2, g3)
        trend_verdict(g1, g2, g3, g4, now, 1.0, 1.0, 1.0, True, 1e-9, 2, level, g1)
        baseline_verdict(g1, g2, g3, now, 1.0, 1.0, 1.0, True, 1e-9, 2, level, g4, g1)
    got = np.empty(1, np.bool_)
    insert_sorted(times.copy(), values.copy(), count.copy(), rows, ts, values[0, :1], rows, f1, got)
    _warm = True
