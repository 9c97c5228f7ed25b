"""Loops over the ring buffers' own rows (sorted, ``count`` places used): inserting a
batch in time order, and the latest value at a time."""

from __future__ import annotations

import math
from typing import Any

from .jit import compiled


@compiled
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


@compiled
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
