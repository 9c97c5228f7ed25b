"""Verdicts: whether each reading fires, from what its history showed (change, trend,
baseline), and the points of an early-warning score's bands."""

from __future__ import annotations

import math
from typing import Any

from .jit import compiled


@compiled
def score_bands(
    values: Any,
    low: Any,
    high: Any,
    band_points: Any,
    points: Any,
    total: Any,
    single: Any,
    available: Any,
) -> None:
    """Points of each parameter's value (``values`` (P, B)) by the first of its bands
    ``[low, high)`` holding it (NaN: no value or no band), their sum, the highest, and
    how many parameters scored."""
    for i in range(values.shape[1]):
        tot = 0.0
        top = 0.0
        scored = 0
        for p in range(values.shape[0]):
            v = values[p, i]
            got = math.nan
            if not math.isnan(v):
                for j in range(low.shape[1]):
                    if low[p, j] <= v < high[p, j]:
                        got = band_points[p, j]
                        break
            points[p, i] = got
            if not math.isnan(got):
                tot += got
                top = max(top, got)
                scored += 1
        total[i] = tot
        single[i] = top
        available[i] = scored


@compiled
def change_verdict(
    now: Any,
    ref: Any,
    rise: bool,
    min_change: Any,
    min_pct: Any,
    use_change: bool,
    use_pct: bool,
    eps: float,
    level: int,
    severity: Any,
    change: Any,
    pct: Any,
) -> None:
    """A change rule's verdict: the change from the window's extreme ``ref`` to ``now``
    (and in percent of ``ref``) reaches ``min_change`` or ``min_pct`` (one per reading,
    or one for all). Where there is no reference or value, ``ref`` becomes NaN."""
    per = min_change.shape[0] > 1
    for i in range(now.shape[0]):
        have = not math.isnan(ref[i]) and not math.isnan(now[i])
        d = ((now[i] - ref[i]) if rise else (ref[i] - now[i])) if have else 0.0
        p = d / abs(ref[i]) * 100.0 if have and ref[i] != 0 else 0.0
        li = i if per else 0
        fires = have and (
            (use_change and d >= min_change[li] - eps) or (use_pct and p >= min_pct[li] - eps)
        )
        severity[i] = level if fires else 0
        change[i] = d
        pct[i] = p
        if not have:
            ref[i] = math.nan


@compiled
def trend_verdict(
    n: Any,
    slope: Any,
    sxx: Any,
    first: Any,
    now: Any,
    min_readings: float,
    min_span_days: float,
    limit: float,
    rise: bool,
    eps: float,
    level: int,
    severity: Any,
    span: Any,
) -> None:
    """A trend rule's verdict: enough readings over enough days, the reading's own value
    present, and a slope at or past ``limit`` (its negative for a fall). Where the fit
    does not count, ``slope`` and ``span`` are 0."""
    for i in range(n.shape[0]):
        ok = (
            n[i] >= min_readings
            and sxx[i] > 0
            and not math.isnan(now[i])
            and -first[i] >= min_span_days - eps
        )
        if not ok:
            slope[i] = 0.0
        span[i] = -first[i] if ok else 0.0
        fires = ok and (slope[i] >= limit - eps if rise else slope[i] <= -limit + eps)
        severity[i] = level if fires else 0


@compiled
def baseline_verdict(
    count: Any,
    median: Any,
    mad: Any,
    now: Any,
    min_readings: float,
    min_deviation: float,
    mad_sd: float,
    rise: bool,
    eps: float,
    level: int,
    severity: Any,
    deviation: Any,
    needed: Any,
) -> None:
    """A baseline rule's verdict: enough baseline readings, and the reading off the median
    the bad way by ``min_deviation``, and by ``mad_sd`` x MAD when that is given (not NaN).
    ``deviation`` is 0 where it cannot be computed; ``needed`` NaN where the MAD is."""
    for i in range(count.shape[0]):
        d = (now[i] - median[i]) if rise else (median[i] - now[i])
        need = min_deviation
        if not math.isnan(mad_sd):
            need = max(need, mad_sd * mad[i]) if not math.isnan(mad[i]) else math.nan
        fires = count[i] >= min_readings and d >= need - eps  # NaN compares false
        severity[i] = level if fires else 0
        deviation[i] = 0.0 if math.isnan(d) else d
        needed[i] = need
