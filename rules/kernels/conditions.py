"""Loops over the conditions of a rule's tiers: which a reading's own values meet, and how
many of a reading's history, or for how long, breached them.

They call each other (``_holds``), so they share this module: numba's cache checks only the
file of the loop it loads, and a loop compiled against another file's could go stale."""

from __future__ import annotations

import math
from typing import Any

from .jit import compiled

# Condition operators as the kernels take them (``rules.spec.COMPARATORS``)
OP_CODES = {">": 0, ">=": 1, "<": 2, "<=": 3}


@compiled
def _holds(v: float, op: int, limit: float) -> bool:
    if op == 0:
        return v > limit
    if op == 1:
        return v >= limit
    if op == 2:
        return v < limit
    return v <= limit


@compiled
def _any_holds(values: Any, comp: Any, op: Any, limits: Any, li: int) -> bool:
    for j in range(comp.shape[0]):  # noqa: SIM110 - a loop compiles; any() over a generator is slower
        if _holds(values[comp[j]], op[j], limits[li, j]):
            return True
    return False


@compiled
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


@compiled
def tier_levels_at(
    current: Any, comp: Any, op: Any, limits: Any, level: Any, out: Any, at: Any
) -> None:
    """``tier_levels``, and in ``at[i]`` the first condition that met ``out[i]`` (-1:
    none): its direction is the interpretation's (``rules.interpretation``)."""
    per = limits.shape[0] > 1
    for i in range(current.shape[0]):
        li = i if per else 0
        best = 0
        first = -1
        for j in range(comp.shape[0]):
            if level[j] > best and _holds(current[i, comp[j]], op[j], limits[li, j]):
                best = level[j]
                first = j
        out[i] = best
        at[i] = first


@compiled
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


@compiled
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
