"""The compiled rule-engine loops (``rules.kernels``) against plain-Python references.

Each kernel is run on generated histories and compared with a reference written here as
plainly as possible: loops over Python lists, ``sorted``, ``statistics.median``, exact
fractions. Histories are small (1-4 rows of 1-10 places, 1-3 components) with times on
a small integer grid so that equal times happen, NaN values now and then, and three
layouts of a row:

- ``buffer``: a ring buffer's own row, sorted, ``count`` places used, ``+inf`` and NaN
  after them;
- ``hidden``: such a row where some used places have time ``+inf`` but keep their
  values (the late-reading path hides a batch's readings that way);
- ``shuffled``: places in any order, ``+inf`` anywhere.

``latest_at`` and ``insert_sorted`` read buffers themselves, so they get ``buffer`` rows
only. A few hand-written cases with exact numbers come first, to show what each computes.
"""

from __future__ import annotations

import logging
import math
import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.kernels import (
    OP_CODES,
    baseline_verdict,
    breaching_count,
    breaching_run,
    change_verdict,
    insert_sorted,
    jit,
    latest_at,
    least_squares,
    robust_center,
    score_bands,
    tier_levels,
    trend_verdict,
    window_extreme,
)
from tests.examples import examples

pytestmark = pytest.mark.pure

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Intp = npt.NDArray[np.intp]

INF = math.inf
NAN = math.nan
HOUR = 3600.0

PROPS = settings(
    max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Python's comparisons, like numpy's and the kernels', are false for NaN.
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

LAYOUTS = ("buffer", "hidden", "shuffled")
GRID = 12  # times are whole numbers 0..GRID: equal times are common
TIME = st.integers(0, GRID).map(float)
SPAN = st.integers(0, GRID + 1).map(float)  # window lengths, skips, freshness
VALUE = st.one_of(
    st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, NAN]),
    st.floats(-100.0, 100.0, allow_nan=False),
)
LIMIT = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])


def same(got: npt.ArrayLike, want: npt.ArrayLike) -> None:
    """Exactly equal, NaN equal to NaN."""
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want, dtype=np.float64))


# --- generated inputs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """Rows of history and the readings that read them: reading i's row is ``rows[i]``."""

    times: F64  # (R, C)
    values: F64  # (R, C, K)
    count: I32  # (R,) places used (a buffer's rows; C for shuffled ones)
    rows: Intp  # (B,)
    ts: F64  # (B,)

    def places(self, i: int) -> list[tuple[float, list[float]]]:
        """Reading i's row as (time, values) per place, in place order."""
        r = int(self.rows[i])
        return [
            (float(self.times[r, c]), [float(v) for v in self.values[r, c]])
            for c in range(self.times.shape[1])
        ]


@st.composite
def histories(draw: st.DrawFn, layout: str, no_row: bool = False) -> History:
    """A history of the given layout; ``no_row``: some readings have row -1."""
    n_rows = draw(st.integers(1, 4), label="R")
    width = draw(st.integers(1, 10), label="C")
    k = draw(st.integers(1, 3), label="K")
    times = np.full((n_rows, width), INF)
    values = np.full((n_rows, width, k), NAN)
    count = np.zeros(n_rows, np.int32)
    for r in range(n_rows):
        if layout == "shuffled":
            row = draw(st.lists(st.one_of(TIME, st.just(INF)), min_size=width, max_size=width))
        else:
            used = draw(st.integers(0, width))
            row = sorted(draw(st.lists(TIME, min_size=used, max_size=used)))
        for c, t in enumerate(row):
            times[r, c] = t
            values[r, c] = draw(st.lists(VALUE, min_size=k, max_size=k))
        if layout == "hidden":
            hide = draw(st.lists(st.booleans(), min_size=len(row), max_size=len(row)))
            times[r, : len(row)][np.array(hide, np.bool_)] = INF
        count[r] = len(row)
    b = draw(st.integers(1, 5), label="B")
    rows = draw(st.lists(st.integers(-1 if no_row else 0, n_rows - 1), min_size=b, max_size=b))
    ts = draw(st.lists(TIME, min_size=b, max_size=b))
    return History(times, values, count, np.array(rows, np.intp), np.array(ts))


@dataclass(frozen=True, slots=True)
class Conditions:
    """Conditions ``values[comp[j]] op[j] limits[row][j]``, as a rule's tier compiles them."""

    comp: list[int]
    op: list[str]
    level: list[int]
    limits: list[list[float]]  # one row for every reading, or one per reading

    def limit_row(self, i: int) -> list[float]:
        return self.limits[i] if len(self.limits) > 1 else self.limits[0]

    def meets(self, values: Sequence[float], i: int) -> list[bool]:
        """Which conditions reading i's ``values`` meet."""
        row = self.limit_row(i)
        return [
            COMPARE[o](values[c], row[j])
            for j, (c, o) in enumerate(zip(self.comp, self.op, strict=True))
        ]

    def arrays(self) -> tuple[Intp, I64, F64, I8]:
        return (
            np.array(self.comp, np.intp),
            np.array([OP_CODES[o] for o in self.op], np.int64),
            np.array(self.limits, np.float64),
            np.array(self.level, np.int8),
        )


@st.composite
def conditions(draw: st.DrawFn, k: int, b: int) -> Conditions:
    m = draw(st.integers(1, 3))
    comp = draw(st.lists(st.integers(0, k - 1), min_size=m, max_size=m))
    op = draw(st.lists(st.sampled_from(sorted(OP_CODES)), min_size=m, max_size=m))
    level = draw(st.lists(st.integers(1, 4), min_size=m, max_size=m))
    per_reading = draw(st.booleans())
    rows = b if per_reading else 1
    limits = draw(st.lists(st.lists(LIMIT, min_size=m, max_size=m), min_size=rows, max_size=rows))
    return Conditions(comp, op, level, limits)


# --- references ----------------------------------------------------------------------


def ref_tier_level(values: Sequence[float], conds: Conditions, i: int) -> int:
    met = conds.meets(values, i)
    return max((lvl for lvl, hit in zip(conds.level, met, strict=True) if hit), default=0)


def ref_breaching_count(
    places: list[tuple[float, list[float]]], t0: float, conds: Conditions, i: int, last_n: int
) -> tuple[int, int]:
    """(breaching, seen) of the last ``last_n`` readings at or before t0, in time order
    (of equal times, place order: a buffer keeps them in arrival order)."""
    before = sorted(
        ((t, c, vals) for c, (t, vals) in enumerate(places) if t <= t0),
        key=lambda p: (p[0], p[1]),
    )
    last = before[-last_n:]
    return sum(any(conds.meets(vals, i)) for _, _, vals in last), len(last)


def ref_breaching_run(
    places: list[tuple[float, list[float]]], t0: float, conds: Conditions, i: int
) -> float:
    """Walk back from t0, time by time: the run goes on while every reading of a time
    breaches; its duration is t0 minus the earliest time it reached."""
    all_breach: dict[float, bool] = {}
    for t, vals in places:
        if t <= t0:
            all_breach[t] = all_breach.get(t, True) and any(conds.meets(vals, i))
    start = None
    for t in sorted(all_breach, reverse=True):
        if not all_breach[t]:
            break
        start = t
    return t0 - start if start is not None else 0.0


def ref_window_extreme(
    places: list[tuple[float, list[float]]], t0: float, comp: int, back_s: float, lowest: bool
) -> tuple[float, float]:
    inside = [
        (t, vals[comp])
        for t, vals in places
        if t0 - back_s <= t < t0 and not math.isnan(vals[comp])
    ]
    if not inside:
        return NAN, NAN
    best = min(v for _, v in inside) if lowest else max(v for _, v in inside)
    return best, min(t for t, v in inside if v == best)  # the earliest of equal ones


@dataclass(frozen=True, slots=True)
class Fit:
    n: int
    first: float
    sxx: Fraction | None  # exact; None without readings
    slope: Fraction | None  # exact; None without readings or without a spread of times


def ref_least_squares(
    places: list[tuple[float, list[float]]], t0: float, comp: int, back_s: float, day_s: float
) -> Fit:
    pts = [
        (t, vals[comp])
        for t, vals in places
        if t0 - back_s <= t <= t0 and not math.isnan(vals[comp])
    ]
    if not pts:
        return Fit(0, INF, None, None)
    first = min((t - t0) / day_s for t, _ in pts)
    xs = [Fraction(t - t0) / Fraction(day_s) for t, _ in pts]
    ys = [Fraction(y) for _, y in pts]
    mx = sum(xs, Fraction(0)) / len(xs)
    my = sum(ys, Fraction(0)) / len(ys)
    sxx = sum(((x - mx) ** 2 for x in xs), Fraction(0))
    sxy = sum(((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)), Fraction(0))
    return Fit(len(pts), first, sxx, sxy / sxx if sxx else None)


def ref_robust_center(
    places: list[tuple[float, list[float]]],
    t0: float,
    comp: int,
    back_s: float,
    skip_s: float,
    min_readings: int,
) -> tuple[int, float, float]:
    vals = [
        v[comp] for t, v in places if t0 - back_s <= t < t0 - skip_s and not math.isnan(v[comp])
    ]
    if not vals or len(vals) < min_readings:
        return len(vals), NAN, NAN
    median = statistics.median(vals)
    return len(vals), median, statistics.median([abs(v - median) for v in vals])


def ref_latest_at(
    places: list[tuple[float, list[float]]], t0: float, comp: int, fresh_s: float
) -> tuple[float, float]:
    found = [
        (t, c, vals[comp])
        for c, (t, vals) in enumerate(places)
        if t0 - fresh_s <= t <= t0 and not math.isnan(vals[comp])
    ]
    if not found:
        return NAN, NAN
    newest = max(t for t, _, _ in found)
    # found is in place order: the first place of the newest time
    return next(v for t, _, v in found if t == newest), newest


def ref_score(
    v: float, low: Sequence[float], high: Sequence[float], points: Sequence[float]
) -> float:
    if math.isnan(v):
        return NAN
    for lo, hi, pts in zip(low, high, points, strict=True):
        if lo <= v < hi:
            return pts
    return NAN


# --- hand-written cases --------------------------------------------------------------


def one_row(times: Sequence[float], values: Sequence[float]) -> tuple[F64, F64, Intp]:
    """A one-component history of one row, read by one reading."""
    return (
        np.array([times], np.float64),
        np.array(values, np.float64).reshape(1, len(values), 1),
        np.zeros(1, np.intp),
    )


def test_tier_levels_picks_the_highest_tier_met() -> None:
    # SpO2 < 92 is tier 2, < 88 tier 3; heart rate > 120 tier 2
    current = np.array([[95.0, 80.0], [90.0, 80.0], [86.0, 130.0], [NAN, 70.0]])
    comp = np.array([0, 0, 1], np.intp)
    op = np.array([OP_CODES["<"], OP_CODES["<"], OP_CODES[">"]], np.int64)
    level = np.array([2, 3, 2], np.int8)
    out = np.empty(4, np.int8)
    tier_levels(current, comp, op, np.array([[92.0, 88.0, 120.0]]), level, out)
    same(out, [0, 2, 3, 0])
    # one row of limits per reading: the first reading's SpO2 limit is 96
    per = np.array([[96.0, 88.0, 120.0]] + [[92.0, 88.0, 120.0]] * 3)
    tier_levels(current, comp, op, per, level, out)
    same(out, [2, 2, 3, 0])


def test_breaching_count_counts_k_of_the_last_n() -> None:
    # SpO2 < 90 in 2 of the last 3 readings up to t=4 (the one at t=5 is after it)
    times, values, rows = one_row([0, 1, 2, 3, 4, 5], [91, 88, 95, 87, 89, 80])
    count, seen = np.empty(1), np.empty(1)
    comp, op = np.zeros(1, np.intp), np.array([OP_CODES["<"]], np.int64)
    breaching_count(
        times, values, rows, np.array([4.0]), comp, op, np.array([[90.0]]), 3, count, seen
    )
    same(count, [2])
    same(seen, [3])
    # with n = 10 only the five readings at or before t=4 are there to see
    breaching_count(
        times, values, rows, np.array([4.0]), comp, op, np.array([[90.0]]), 10, count, seen
    )
    same(count, [3])
    same(seen, [5])


def test_breaching_run_lasts_from_the_first_breach_after_the_last_normal_reading() -> None:
    # SpO2 < 90: normal at 3 h, breaching at 4 h, 5 h and 7 h; a NaN SpO2 breaks a run
    times, values, rows = one_row(
        [0, HOUR, 3 * HOUR, 4 * HOUR, 5 * HOUR, 7 * HOUR, 8 * HOUR],
        [88, 87, 94, 89, 88, 85, NAN],
    )
    comp, op = np.zeros(1, np.intp), np.array([OP_CODES["<"]], np.int64)
    duration = np.empty(3)
    ts = np.array([7 * HOUR, 3 * HOUR, 8 * HOUR])
    rows = np.zeros(3, np.intp)
    breaching_run(times, values, rows, ts, comp, op, np.array([[90.0]]), duration)
    same(duration, [3 * HOUR, 0.0, 0.0])


def test_window_extreme_finds_the_earliest_lowest_before_the_reading() -> None:
    # weight: lowest in [t - 72 h, t) is 80.0, first at 24 h (not 0 h: outside the window)
    times, values, rows = one_row(
        [0, 24 * HOUR, 48 * HOUR, 60 * HOUR, 96 * HOUR], [79.0, 80.0, 81.0, 80.0, 83.0]
    )
    ref, ref_t = np.empty(1), np.empty(1)
    ts = np.array([96 * HOUR])
    window_extreme(times, values, rows, ts, 0, 72 * HOUR, True, ref, ref_t)
    same(ref, [80.0])
    same(ref_t, [24 * HOUR])
    window_extreme(times, values, rows, ts, 0, 72 * HOUR, False, ref, ref_t)
    same(ref, [81.0])  # the reading itself (83.0 at t) is not before it
    same(ref_t, [48 * HOUR])


def test_least_squares_fits_a_line_per_day() -> None:
    # y = 100 + 2 per day, one reading a day, the last at t; the reading at -5 d is out
    days = [-5.0, -3.0, -2.0, -1.0, 0.0]
    times, values, rows = one_row(
        [d * 86400.0 for d in days], [100.0 + 2 * d + (7 if d == -5 else 0) for d in days]
    )
    n, slope, sxx, first = np.empty(1), np.empty(1), np.empty(1), np.empty(1)
    least_squares(times, values, rows, np.zeros(1), 0, 4 * 86400.0, 86400.0, n, slope, sxx, first)
    same(n, [4])
    assert math.isclose(slope[0], 2.0, rel_tol=1e-12)
    assert math.isclose(sxx[0], 5.0, rel_tol=1e-12)  # x = -3, -2, -1, 0 around -1.5
    same(first, [-3.0])


def test_robust_center_of_a_window_with_an_outlier() -> None:
    # [t - 6, t - 1) holds [4, 1, 100, 3, 2]: median 3, deviations [1, 2, 97, 0, 1], MAD 1;
    # 50 is before the window, 60 in the skipped second, 70 the reading itself
    times, values, rows = one_row([0, 1, 2, 3, 4, 5, 6, 7], [50, 4, 1, 100, 3, 2, 60, 70])
    count, median, mad = np.empty(1), np.empty(1), np.empty(1)
    ts = np.array([7.0])
    robust_center(times, values, rows, ts, 0, 6.0, 1.0, 5, count, median, mad)
    same(count, [5])
    same(median, [3.0])
    same(mad, [1.0])
    # one more reading needed than there is: no baseline, but the count is still told
    robust_center(times, values, rows, ts, 0, 6.0, 1.0, 6, count, median, mad)
    same(count, [5])
    same(median, [NAN])
    same(mad, [NAN])
    # an even count, [4, 1, 100, 3]: median 3.5, deviations [0.5, 2.5, 96.5, 0.5] -> 1.5
    robust_center(times, values, rows, np.array([6.0]), 0, 5.0, 1.0, 3, count, median, mad)
    same([count[0], median[0], mad[0]], [4, 3.5, 1.5])


def test_latest_at_takes_the_first_place_of_the_newest_time() -> None:
    times = np.array([[1.0, 4.0, 4.0, 6.0, INF], [INF] * 5])
    values = np.array([[[10.0], [20.0], [30.0], [40.0], [NAN]], [[NAN]] * 5])
    count = np.array([4, 0], np.int32)
    rows = np.array([0, 0, 0, 1, -1], np.intp)
    ts = np.array([5.0, 6.0, 9.0, 5.0, 5.0])
    value, when = np.empty(5), np.empty(5)
    latest_at(times, values, count, rows, ts, 0, 2.0, value, when)
    same(value, [20.0, 40.0, NAN, NAN, NAN])  # at 9 the newest (6) is 3 s old: too old
    same(when, [4.0, 6.0, NAN, NAN, NAN])


def test_score_bands_scores_by_the_first_band_holding_the_value() -> None:
    # respiratory rate (NEWS2: <= 8: 3, 9-11: 1, 12-20: 0, 21-24: 2, >= 25: 3) and SpO2
    # (<= 91: 3, 92-93: 2, 94-95: 1, >= 96: 0), bands [low, high); SpO2 has a padding band
    low = np.array([[-INF, 9, 12, 21, 25], [-INF, 92, 94, 96, INF]], np.float64)
    high = np.array([[9, 12, 21, 25, INF], [92, 94, 96, INF, -INF]], np.float64)
    pts = np.array([[3, 1, 0, 2, 3], [3, 2, 1, 0, 0]], np.float64)
    values = np.array([[22.0, 15.0, NAN], [93.0, NAN, NAN]])
    points, total, single, available = np.empty((2, 3)), np.empty(3), np.empty(3), np.empty(3)
    score_bands(values, low, high, pts, points, total, single, available)
    same(points, [[2, 0, NAN], [2, NAN, NAN]])
    same(total, [4, 0, 0])
    same(single, [2, 0, 0])
    same(available, [2, 1, 0])


def test_insert_sorted_keeps_the_newest_of_a_full_row() -> None:
    # capacity 3: row 0 holds 2, 5, 7; row 1 is empty
    times = np.array([[2.0, 5.0, 7.0], [INF, INF, INF]])
    values = np.array([[[20.0], [50.0], [70.0]], [[NAN]] * 3])
    count = np.array([3, 0], np.int32)
    rows = np.array([0, 0, 1, 0], np.intp)
    ts = np.array([6.0, 1.0, 3.0, 5.0])
    new = np.array([[60.0], [10.0], [30.0], [51.0]])
    order = np.array([1, 3, 0, 2], np.intp)  # by row, then time
    before, newest = np.empty(4), np.empty(4, np.bool_)
    insert_sorted(times, values, count, rows, ts, new, order, before, newest)
    # 1 is older than all of a full row: skipped; 5 drops 2 and goes after the other 5;
    # 6 drops the first 5
    same(times, [[5.0, 6.0, 7.0], [3.0, INF, INF]])
    same(values[:, :, 0], [[51.0, 60.0, 70.0], [30.0, NAN, NAN]])
    same(count, [3, 1])
    same(before, [7.0, 7.0, -INF, 7.0])
    same(newest, [False, False, True, False])


# --- properties: every kernel against its reference ----------------------------------


@PROPS
@given(data=st.data())
def test_tier_levels_matches_the_reference(data: st.DataObject) -> None:
    b = data.draw(st.integers(1, 5), label="B")
    k = data.draw(st.integers(1, 3), label="K")
    current = np.array(
        data.draw(st.lists(st.lists(VALUE, min_size=k, max_size=k), min_size=b, max_size=b)),
        np.float64,
    )
    conds = data.draw(conditions(k, b))
    comp, op, limits, level = conds.arrays()
    out = np.empty(b, np.int8)
    tier_levels(current, comp, op, limits, level, out)
    same(out, [ref_tier_level(list(current[i]), conds, i) for i in range(b)])


# breaching_count reads "the last n places" from a row's end: the newest, as a row's finite
# places are in time order (buffer and hidden rows; ``rules/kernels/``).
@PROPS
@pytest.mark.parametrize("layout", ["buffer", "hidden"])
@given(data=st.data())
def test_breaching_count_matches_the_reference(layout: str, data: st.DataObject) -> None:
    h = data.draw(histories(layout))
    b = len(h.rows)
    conds = data.draw(conditions(h.values.shape[2], b))
    last_n = data.draw(st.integers(1, 12), label="last_n")
    comp, op, limits, _ = conds.arrays()
    count, seen = np.empty(b), np.empty(b)
    breaching_count(h.times, h.values, h.rows, h.ts, comp, op, limits, last_n, count, seen)
    want = [ref_breaching_count(h.places(i), h.ts[i], conds, i, last_n) for i in range(b)]
    same(count, [w[0] for w in want])
    same(seen, [w[1] for w in want])


@PROPS
@pytest.mark.parametrize("layout", LAYOUTS)
@given(data=st.data())
def test_breaching_run_matches_the_reference(layout: str, data: st.DataObject) -> None:
    h = data.draw(histories(layout))
    b = len(h.rows)
    conds = data.draw(conditions(h.values.shape[2], b))
    comp, op, limits, _ = conds.arrays()
    duration = np.empty(b)
    breaching_run(h.times, h.values, h.rows, h.ts, comp, op, limits, duration)
    same(duration, [ref_breaching_run(h.places(i), h.ts[i], conds, i) for i in range(b)])


# window_extreme keeps the first place of equal extremes: the earliest, as a row's finite
# places are in time order.
@PROPS
@pytest.mark.parametrize("layout", ["buffer", "hidden"])
@given(data=st.data(), lowest=st.booleans(), back_s=SPAN)
def test_window_extreme_matches_the_reference(
    layout: str, data: st.DataObject, lowest: bool, back_s: float
) -> None:
    h = data.draw(histories(layout))
    comp = data.draw(st.integers(0, h.values.shape[2] - 1), label="comp")
    b = len(h.rows)
    ref, ref_t = np.empty(b), np.empty(b)
    window_extreme(h.times, h.values, h.rows, h.ts, comp, back_s, lowest, ref, ref_t)
    want = [ref_window_extreme(h.places(i), h.ts[i], comp, back_s, lowest) for i in range(b)]
    same(ref, [w[0] for w in want])
    same(ref_t, [w[1] for w in want])


@PROPS
@pytest.mark.parametrize("layout", LAYOUTS)
@given(data=st.data(), lowest=st.booleans(), back_s=SPAN)
def test_window_extreme_value_matches_the_reference_in_any_order(
    layout: str, data: st.DataObject, lowest: bool, back_s: float
) -> None:
    """The extreme itself, and that its time holds a place of that value, in any layout."""
    h = data.draw(histories(layout))
    comp = data.draw(st.integers(0, h.values.shape[2] - 1), label="comp")
    b = len(h.rows)
    ref, ref_t = np.empty(b), np.empty(b)
    window_extreme(h.times, h.values, h.rows, h.ts, comp, back_s, lowest, ref, ref_t)
    for i in range(b):
        best, _ = ref_window_extreme(h.places(i), h.ts[i], comp, back_s, lowest)
        same([ref[i]], [best])
        if not math.isnan(best):
            at = [t for t, v in h.places(i) if t == ref_t[i] and v[comp] == best]
            assert at, "no place of the extreme at its time"
            assert h.ts[i] - back_s <= ref_t[i] < h.ts[i]


@PROPS
@pytest.mark.parametrize("layout", LAYOUTS)
@given(data=st.data(), back_s=SPAN, day_s=st.sampled_from([1.0, 3.0, 24.0, 86400.0]))
def test_least_squares_matches_the_reference(
    layout: str, data: st.DataObject, back_s: float, day_s: float
) -> None:
    h = data.draw(histories(layout))
    comp = data.draw(st.integers(0, h.values.shape[2] - 1), label="comp")
    b = len(h.rows)
    n, slope, sxx, first = np.empty(b), np.empty(b), np.empty(b), np.empty(b)
    least_squares(h.times, h.values, h.rows, h.ts, comp, back_s, day_s, n, slope, sxx, first)
    for i in range(b):
        fit = ref_least_squares(h.places(i), h.ts[i], comp, back_s, day_s)
        assert n[i] == fit.n
        assert first[i] == fit.first
        if fit.sxx is None:  # no readings
            assert math.isnan(slope[i])
            assert sxx[i] == 0.0
            continue
        assert math.isclose(sxx[i], fit.sxx, rel_tol=1e-9, abs_tol=1e-9)
        if fit.slope is not None:
            assert math.isclose(slope[i], fit.slope, rel_tol=1e-9, abs_tol=1e-9)
        else:  # readings all of one time: no spread, no slope
            assert sxx[i] == 0.0
            assert math.isnan(slope[i])


@PROPS
@pytest.mark.parametrize("layout", LAYOUTS)
@given(
    data=st.data(),
    back_s=SPAN,
    skip_s=st.integers(0, 3).map(float),
    min_readings=st.integers(0, 5),
)
def test_robust_center_matches_the_reference(
    layout: str, data: st.DataObject, back_s: float, skip_s: float, min_readings: int
) -> None:
    h = data.draw(histories(layout))
    comp = data.draw(st.integers(0, h.values.shape[2] - 1), label="comp")
    b = len(h.rows)
    count, median, mad = np.empty(b), np.empty(b), np.empty(b)
    robust_center(
        h.times, h.values, h.rows, h.ts, comp, back_s, skip_s, min_readings, count, median, mad
    )
    want = [
        ref_robust_center(h.places(i), h.ts[i], comp, back_s, skip_s, min_readings)
        for i in range(b)
    ]
    same(count, [w[0] for w in want])
    same(median, [w[1] for w in want])
    same(mad, [w[2] for w in want])


@PROPS
@given(data=st.data(), fresh_s=SPAN)
def test_latest_at_matches_the_reference(data: st.DataObject, fresh_s: float) -> None:
    h = data.draw(histories("buffer", no_row=True))
    comp = data.draw(st.integers(0, h.values.shape[2] - 1), label="comp")
    b = len(h.rows)
    value, when = np.empty(b), np.empty(b)
    latest_at(h.times, h.values, h.count, h.rows, h.ts, comp, fresh_s, value, when)
    want = [
        ref_latest_at(h.places(i), h.ts[i], comp, fresh_s) if h.rows[i] >= 0 else (NAN, NAN)
        for i in range(b)
    ]
    same(value, [w[0] for w in want])
    same(when, [w[1] for w in want])


BOUND = st.one_of(st.integers(-2, 4).map(float), st.sampled_from([-INF, INF]))


@PROPS
@given(data=st.data())
def test_score_bands_matches_the_reference(data: st.DataObject) -> None:
    p = data.draw(st.integers(1, 4), label="P")
    b = data.draw(st.integers(1, 5), label="B")
    width = data.draw(st.integers(1, 4), label="N")

    def grid(elements: st.SearchStrategy[float], rows: int, cols: int) -> list[list[float]]:
        return data.draw(
            st.lists(st.lists(elements, min_size=cols, max_size=cols), min_size=rows, max_size=rows)
        )

    values = grid(st.sampled_from([-2.0, -0.5, 0.0, 1.0, 1.5, 3.0, 5.0, NAN]), p, b)
    low, high = grid(BOUND, p, width), grid(BOUND, p, width)
    pts = grid(st.integers(0, 3).map(float), p, width)
    points, total, single, available = np.empty((p, b)), np.empty(b), np.empty(b), np.empty(b)
    score_bands(
        np.array(values),
        np.array(low),
        np.array(high),
        np.array(pts),
        points,
        total,
        single,
        available,
    )
    want = [[ref_score(values[q][i], low[q], high[q], pts[q]) for i in range(b)] for q in range(p)]
    same(points, want)
    for i in range(b):
        scored = [want[q][i] for q in range(p) if not math.isnan(want[q][i])]
        same(
            [total[i], single[i], available[i]],
            [sum(scored), max(scored, default=0.0), len(scored)],
        )


@PROPS
@given(data=st.data())
def test_insert_sorted_matches_the_reference(data: st.DataObject) -> None:
    h = data.draw(histories("buffer"))
    n_rows, capacity, k = h.values.shape
    b = data.draw(st.integers(1, 8), label="batch")
    rows = data.draw(st.lists(st.integers(0, n_rows - 1), min_size=b, max_size=b))
    ts = data.draw(st.lists(TIME, min_size=b, max_size=b))
    # values that tell every reading apart: reading j's are 1000 + 10 * j + component
    new = np.array([[1000.0 + 10 * j + c for c in range(k)] for j in range(b)])
    times, values, count = h.times.copy(), h.values.copy(), h.count.copy()
    order = np.array(sorted(range(b), key=lambda j: (rows[j], ts[j])), np.intp)
    before, newest = np.empty(b), np.empty(b, np.bool_)
    insert_sorted(
        times, values, count, np.array(rows, np.intp), np.array(ts), new, order, before, newest
    )
    newest_after: dict[int, float] = {}
    for r in range(n_rows):
        # (time, arrival, values): what a row held first, then the batch in arrival order
        held = [(h.times[r, c], c - capacity, list(h.values[r, c])) for c in range(h.count[r])]
        held += [(ts[j], j, list(new[j])) for j in range(b) if rows[j] == r]
        kept = sorted(held, key=lambda p: (p[0], p[1]))[-capacity:]
        pad = capacity - len(kept)
        same(times[r], [p[0] for p in kept] + [INF] * pad)
        same(values[r], [p[2] for p in kept] + [[NAN] * k] * pad)
        assert count[r] == len(kept)
        newest_after[r] = max((p[0] for p in kept), default=-INF)
    held_before = [max(h.times[r, : h.count[r]], default=-INF) for r in range(n_rows)]
    same(before, [held_before[rows[j]] for j in range(b)])
    same(newest, [ts[j] >= newest_after[rows[j]] for j in range(b)])


# --- edge cases the properties leave out ---------------------------------------------


def test_least_squares_of_readings_all_of_one_time_has_no_spread() -> None:
    # six readings 5 s before t, day = 86400 s: (x + ... + x) / 6 != x in binary, so the
    # deviations from the mean would be ~1e-20, not 0 (sxx 2.8e-40, slope 174762.7 per day)
    values = [37.3, 2.0, 1.0, -0.5, 0.0, -2.0]
    times, vals, rows = one_row([7.0] * 6, values)
    n, slope, sxx, first = np.empty(1), np.empty(1), np.empty(1), np.empty(1)
    least_squares(times, vals, rows, np.array([12.0]), 0, 20.0, 86400.0, n, slope, sxx, first)
    same(n, [6])
    same(sxx, [0.0])
    same(slope, [NAN])


# --- verdicts: each reading's severity from what its history showed -----------------
#
# The reading's own value comes in as a column of its (B, K) values: strided when K > 1.

EPS = 1e-9
MAYBE = st.one_of(
    st.just(NAN), st.floats(-50.0, 50.0, allow_nan=False), st.sampled_from([0.0, 1.0])
)


def column(data: st.DataObject, values: list[float]) -> F64:
    """``values`` as a contiguous array, or as the first column of a (B, 2) one."""
    if data.draw(st.booleans(), label="strided"):
        wide = np.zeros((len(values), 2))
        wide[:, 0] = values
        return wide[:, 0]
    return np.array(values, np.float64)


@PROPS
@given(
    data=st.data(),
    rows=st.lists(st.tuples(MAYBE, MAYBE), min_size=1, max_size=6),
    rise=st.booleans(),
    use=st.sampled_from([(True, False), (False, True), (True, True)]),
    per_reading=st.booleans(),
)
def test_change_verdict_matches_the_reference(
    data: st.DataObject,
    rows: list[tuple[float, float]],
    rise: bool,
    use: tuple[bool, bool],
    per_reading: bool,
) -> None:
    b = len(rows)
    size = b if per_reading else 1
    min_change = np.array(data.draw(st.lists(LIMIT, min_size=size, max_size=size)), np.float64)
    min_pct = np.array(data.draw(st.lists(LIMIT, min_size=size, max_size=size)), np.float64) * 10
    now = column(data, [r[0] for r in rows])
    ref = np.array([r[1] for r in rows], np.float64)
    severity, change, pct = np.empty(b, np.int8), np.empty(b), np.empty(b)
    change_verdict(
        now, ref, rise, min_change, min_pct, use[0], use[1], EPS, 3, severity, change, pct
    )
    for i, (v, r) in enumerate(rows):
        have = not math.isnan(v) and not math.isnan(r)
        d = ((v - r) if rise else (r - v)) if have else 0.0
        p = d / abs(r) * 100.0 if have and r != 0 else 0.0
        li = i if per_reading else 0
        fires = have and (
            (use[0] and d >= min_change[li] - EPS) or (use[1] and p >= min_pct[li] - EPS)
        )
        assert severity[i] == (3 if fires else 0)
        same([change[i], pct[i], ref[i]], [d, p, r if have else NAN])


@PROPS
@given(
    data=st.data(),
    fits=st.lists(
        st.tuples(st.integers(0, 12), MAYBE, st.floats(0.0, 4.0), st.floats(-10.0, 0.0), MAYBE),
        min_size=1,
        max_size=6,
    ),
    min_readings=st.integers(1, 6),
    min_span=st.sampled_from([0.0, 1.0, 3.0]),
    limit=st.sampled_from([0.5, 1.0, 2.0]),
    rise=st.booleans(),
)
def test_trend_verdict_matches_the_reference(
    data: st.DataObject,
    fits: list[tuple[int, float, float, float, float]],
    min_readings: int,
    min_span: float,
    limit: float,
    rise: bool,
) -> None:
    b = len(fits)
    n = np.array([f[0] for f in fits], np.float64)
    slope = np.array([f[1] for f in fits], np.float64)
    sxx = np.array([f[2] for f in fits], np.float64)
    first = np.array([f[3] for f in fits], np.float64)
    now = column(data, [f[4] for f in fits])
    severity, span = np.empty(b, np.int8), np.empty(b)
    trend_verdict(
        n, slope, sxx, first, now, min_readings, min_span, limit, rise, EPS, 2, severity, span
    )
    for i, (count, s, spread, oldest, v) in enumerate(fits):
        ok = count >= min_readings and spread > 0 and not math.isnan(v)
        ok = ok and -oldest >= min_span - EPS
        s = s if ok else 0.0
        fires = ok and (s >= limit - EPS if rise else s <= -limit + EPS)
        assert severity[i] == (2 if fires else 0)
        same([slope[i], span[i]], [s, -oldest if ok else 0.0])


@PROPS
@given(
    data=st.data(),
    centres=st.lists(
        st.tuples(st.integers(0, 8), MAYBE, st.one_of(st.just(NAN), st.floats(0.0, 5.0)), MAYBE),
        min_size=1,
        max_size=6,
    ),
    min_readings=st.integers(3, 6),
    min_deviation=st.sampled_from([1.0, 4.0]),
    multiplier=st.sampled_from([NAN, 1.0, 3.0]),
    rise=st.booleans(),
)
def test_baseline_verdict_matches_the_reference(
    data: st.DataObject,
    centres: list[tuple[int, float, float, float]],
    min_readings: int,
    min_deviation: float,
    multiplier: float,
    rise: bool,
) -> None:
    b = len(centres)
    count = np.array([c[0] for c in centres], np.float64)
    median = np.array([c[1] for c in centres], np.float64)
    mad = np.array([c[2] for c in centres], np.float64)
    now = column(data, [c[3] for c in centres])
    severity, deviation, needed = np.empty(b, np.int8), np.empty(b), np.empty(b)
    mad_sd = multiplier * 1.4826
    baseline_verdict(
        count,
        median,
        mad,
        now,
        min_readings,
        min_deviation,
        mad_sd,
        rise,
        EPS,
        2,
        severity,
        deviation,
        needed,
    )
    for i, (k, m, spread, v) in enumerate(centres):
        d = (v - m) if rise else (m - v)
        need = min_deviation
        if not math.isnan(mad_sd):  # numpy's maximum: NaN when the MAD is
            need = NAN if math.isnan(spread) else max(need, mad_sd * spread)
        fires = k >= min_readings and d >= need - EPS
        assert severity[i] == (2 if fires else 0)
        same([deviation[i], needed[i]], [0.0 if math.isnan(d) else d, need])


def test_a_loop_numba_cannot_cache_is_compiled_anyway(caplog: pytest.LogCaptureFixture) -> None:
    """Source numba cannot place a cache beside (here: no file at all, as when neither the
    package folder nor NUMBA_CACHE_DIR is writable) still compiles, with a warning."""
    namespace: dict[str, Callable[[int], int]] = {}
    exec(compile("def twice(x):\n    return 2 * x\n", "<no file>", "exec"), namespace)
    jit.uncached.clear()
    with caplog.at_level(logging.WARNING, logger="rules.kernels.jit"):
        twice = jit.compiled(namespace["twice"])
    assert twice(21) == 42
    assert jit.uncached == ["twice"]
    assert "not cached" in caplog.text
