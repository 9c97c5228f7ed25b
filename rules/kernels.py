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

Compiled on first use and cached on disk by numba (``__pycache__`` beside this file, or
``NUMBA_CACHE_DIR``), so a process pays the compilation once per machine. Where numba
finds no writable place, the loops are compiled in each process (a warning says so).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

_F = TypeVar("_F", bound=Callable[..., Any])


log = logging.getLogger(__name__)
_uncached: list[str] = []  # loops numba found nowhere to cache


def _compiled(f: _F) -> _F:
    # error_model="numpy": 0/0 is NaN as in numpy, not an exception
    try:
        return cast(_F, numba.njit(cache=True, nogil=True, error_model="numpy")(f))
    except RuntimeError as exc:  # no writable place for the cache (set NUMBA_CACHE_DIR)
        if not _uncached:
            log.warning("compiled loops are not cached, each process compiles them: %s", exc)
        _uncached.append(f.__name__)
        return cast(_F, numba.njit(nogil=True, error_model="numpy")(f))


# Condition operators as the kernels take them (``rules.spec.COMPARATORS``)
OP_CODES = {">": 0, ">=": 1, "<": 2, "<=": 3}


@_compiled
def _holds(v: float, op: int, limit: float) -> bool:
    if op == 0:
        return v > limit
    if op == 1:
        return v >= limit
    if op == 2:
        return v < limit
    return v <= limit


@_compiled
def _any_holds(values: Any, comp: Any, op: Any, limits: Any, li: int) -> bool:
    for j in range(comp.shape[0]):  # noqa: SIM110 - a loop compiles; any() over a generator is slower
        if _holds(values[comp[j]], op[j], limits[li, j]):
            return True
    return False


@_compiled
def tier_levels(current: Any, comp: Any, op: Any, limits: Any, level: Any, out: Any) -> None:
    """``out[i]``: the highest ``level[j]`` of the conditions ``j`` reading ``i``'s own
    values meet (0: none). ``limits`` has one row per reading, or one row for all."""
    per = limits.shape[0] > 1
    for i in range(current.shape[0]):
        li = i if per else 0
        best = 0
        for j in range(comp.shape[0]):
            if level[j] > best and _holds(current[i, comp[j]], op[j], limits[li, j]):
                best = level[j]
        out[i] = best


@_compiled
def breaching_count(
    times: Any,
    values: Any,
    rows: Any,
    ts: Any,
    comp: Any,
    op: Any,
    limits: Any,
    last_n: int,
    count: Any,
    seen: Any,
) -> None:
    """Of each reading's last ``last_n`` places at or before it (``seen`` of them), how
    many meet any of the conditions (``count``)."""
    per = limits.shape[0] > 1
    for i in range(rows.shape[0]):
        r = rows[i]
        t0 = ts[i]
        li = i if per else 0
        n = 0
        k = 0
        for c in range(times.shape[1] - 1, -1, -1):
            if not times[r, c] <= t0:
                continue
            n += 1
            if _any_holds(values[r, c], comp, op, limits, li):
                k += 1
            if n == last_n:
                break
        count[i] = k
        seen[i] = n


@_compiled
def breaching_run(
    times: Any, values: Any, rows: Any, ts: Any, comp: Any, op: Any, limits: Any, duration: Any
) -> None:
    """How long each reading's unbroken run of breaching readings, ending at it, has
    lasted: from the first breaching place after the last place that did not breach
    (0 when no place at or before it breaches after that one)."""
    per = limits.shape[0] > 1
    for i in range(rows.shape[0]):
        r = rows[i]
        t0 = ts[i]
        li = i if per else 0
        last_ok = -math.inf
        for c in range(times.shape[1]):
            t = times[r, c]
            if t <= t0 and t > last_ok and not _any_holds(values[r, c], comp, op, limits, li):
                last_ok = t
        start = math.inf
        for c in range(times.shape[1]):
            t = times[r, c]
            if t <= t0 and last_ok < t < start and _any_holds(values[r, c], comp, op, limits, li):
                start = t
        duration[i] = t0 - start if start < math.inf else 0.0


@_compiled
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


@_compiled
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


@_compiled
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


@_compiled
def latest_at(
    times: Any,
    values: Any,
    count: Any,
    rows: Any,
    ts: Any,
    comp: Any,
    fresh_s: float,
    value: Any,
    when: Any,
) -> None:
    """Each reading's patient's newest value of ``comp`` at or before it and no older than
    ``fresh_s`` (of equal times the first place), NaN where none or the row is -1. Rows
    are a buffer's own: sorted, ``count`` places used."""
    for i in range(rows.shape[0]):
        r = rows[i]
        value[i] = math.nan
        when[i] = math.nan
        if r < 0:
            continue
        t0 = ts[i]
        lo = t0 - fresh_s
        found = -1
        for c in range(count[r] - 1, -1, -1):
            t = times[r, c]
            if t > t0:
                continue
            if t < lo or (found >= 0 and t < times[r, found]):
                break
            if not math.isnan(values[r, c, comp]):
                found = c  # keeps going back over places of the same time
        if found >= 0:
            value[i] = values[r, found, comp]
            when[i] = times[r, found]


@_compiled
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


@_compiled
def insert_sorted(
    times: Any,
    values: Any,
    count: Any,
    rows: Any,
    ts: Any,
    new: Any,
    order: Any,
    before: Any,
    newest: Any,
) -> None:
    """Put each reading ``k`` (in ``order``: by row, then time) into row ``rows[k]`` after
    the places of the same or an earlier time; a full row drops its oldest place, or
    skips a reading older than all it holds. ``before[k]``: the row's newest time before
    the batch (-inf: empty); ``newest[k]``: no place of the row is newer after it."""
    capacity = times.shape[1]
    last_row = -1
    held_before = -math.inf
    for k in order:
        r = rows[k]
        t = ts[k]
        n = count[r]
        if r != last_row:
            last_row = r
            held_before = times[r, n - 1] if n > 0 else -math.inf
        before[k] = held_before
        if n == capacity:
            if t < times[r, 0]:
                continue
            for c in range(capacity - 1):
                times[r, c] = times[r, c + 1]
                values[r, c] = values[r, c + 1]
            n -= 1
        p = n
        while p > 0 and times[r, p - 1] > t:
            times[r, p] = times[r, p - 1]
            values[r, p] = values[r, p - 1]
            p -= 1
        times[r, p] = t
        values[r, p] = new[k]
        count[r] = n + 1
    for k in range(rows.shape[0]):
        r = rows[k]
        newest[k] = ts[k] >= times[r, count[r] - 1]


# --- verdicts: whether each reading fires, from what its history showed -------------


@_compiled
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


@_compiled
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


@_compiled
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
