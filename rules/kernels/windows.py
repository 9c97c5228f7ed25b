"""Statistics of one component over each reading's window of history: the extreme, the
least-squares slope, the median and MAD."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .jit import compiled


@compiled
def window_extreme(
    times: Any,
    values: Any,
    rows: Any,
    ts: Any,
    comp: Any,
    back_s: float,
    lowest: bool,
    ref: Any,
    ref_t: Any,
) -> None:
    """The lowest (or highest) value of ``comp`` in ``[t - back_s, t)`` before each
    reading, and its time; the earliest place of equal ones (NaN where there is none)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        t0 = ts[i]
        lo = t0 - back_s
        best = math.inf if lowest else -math.inf
        best_t = math.nan
        for c in range(times.shape[1]):
            t = times[r, c]
            if not (lo <= t < t0):
                continue
            v = values[r, c, comp]
            if (v < best) if lowest else (v > best):  # NaN is never better
                best = v
                best_t = t
        ref[i] = best if not math.isnan(best_t) else math.nan
        ref_t[i] = best_t


@compiled
def least_squares(
    times: Any,
    values: Any,
    rows: Any,
    ts: Any,
    comp: Any,
    back_s: float,
    day_s: float,
    n_out: Any,
    slope: Any,
    sxx_out: Any,
    first: Any,
) -> None:
    """Least-squares slope per day of ``comp`` over ``[t - back_s, t]`` (the reading
    included), the count of readings, the spread of their times (0, and the slope NaN,
    when they are all of one time) and the oldest one's offset in days (``inf`` when
    there is none)."""
    xs = np.empty(times.shape[1])  # the readings in the window: days before, values
    ys = np.empty(times.shape[1])
    for i in range(rows.shape[0]):
        r = rows[i]
        t0 = ts[i]
        lo = t0 - back_s
        n = 0
        sx = sy = 0.0
        oldest, newest = math.inf, -math.inf
        for c in range(times.shape[1]):
            t = times[r, c]
            if lo <= t <= t0 and not math.isnan(values[r, c, comp]):
                x = (t - t0) / day_s
                xs[n] = x
                ys[n] = values[r, c, comp]
                sx += x
                sy += ys[n]
                oldest = min(oldest, x)
                newest = max(newest, x)
                n += 1
        n_out[i] = n
        first[i] = oldest
        if n == 0 or oldest == newest:  # no spread (the mean's rounding would leave some)
            slope[i] = math.nan
            sxx_out[i] = 0.0
            continue
        mx = sx / n
        my = sy / n
        sxx = 0.0
        sxy = 0.0
        for k in range(n):
            dx = xs[k] - mx
            sxx += dx * dx
            sxy += dx * (ys[k] - my)
        sxx_out[i] = sxx
        slope[i] = sxy / sxx


@compiled
def robust_center(
    times: Any,
    values: Any,
    rows: Any,
    ts: Any,
    comp: Any,
    back_s: float,
    skip_s: float,
    min_readings: int,
    count: Any,
    median: Any,
    mad: Any,
) -> None:
    """Median and median absolute deviation of ``comp`` over ``[t - back_s, t - skip_s)``
    (NaN where fewer than ``min_readings`` values), and the count of values."""
    held = np.empty(times.shape[1])  # the values in the window, kept sorted
    for i in range(rows.shape[0]):
        r = rows[i]
        lo = ts[i] - back_s
        hi = ts[i] - skip_s
        k = 0
        for c in range(times.shape[1]):
            t = times[r, c]
            if lo <= t < hi:
                v = values[r, c, comp]
                if not math.isnan(v):
                    p = k  # insertion: rows are a few dozen values
                    while p > 0 and held[p - 1] > v:
                        held[p] = held[p - 1]
                        p -= 1
                    held[p] = v
                    k += 1
        count[i] = k
        if k < min_readings or k == 0:
            median[i] = math.nan
            mad[i] = math.nan
            continue
        a, b = (k - 1) // 2, k // 2
        m = (held[a] + held[b]) / 2
        # The deviations |v - m| of sorted values are two sorted runs, outward from the
        # median: merge them up to the middle ranks.
        right = 0
        while right < k and held[right] < m:
            right += 1
        left = right - 1
        low = high = math.nan
        for rank in range(b + 1):
            if left >= 0 and (right >= k or m - held[left] <= held[right] - m):
                d = m - held[left]
                left -= 1
            else:
                d = held[right] - m
                right += 1
            if rank == a:
                low = d
            high = d
        median[i] = m
        mad[i] = (low + high) / 2
