"""Late readings: the held readings after one, within their rules' windows, re-evaluated.

A held reading is evaluated with and without the batch's readings of its patient; it
fires only where the late reading made the difference (module doc of ``rules.engine``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from rpm.domain import AcceptedReading, AlertCandidate, Metric, Reading

from .buffers import F64, MetricBuffer, Rows
from .kinds import KINDS, Window
from .kinds.base import given
from .latest import rows_in_of
from .plan import Plan
from .proposal import propose
from .spec import RuleSpec

# Kinds whose result for a reading depends on the readings before it: these are
# re-evaluated for the held readings after a late one.
WINDOWED = frozenset({"persistence", "change", "trend", "baseline"})

# (metric, buffer, rows, times, values, rows in other buffers) -> the readings' window
WindowOf = Callable[[Metric, MetricBuffer, Rows, F64, F64, Callable[[MetricBuffer], Rows]], Window]


@dataclass(slots=True)
class Held:
    """Held readings to re-evaluate after late ones under the same windowed rules."""

    rules: list[RuleSpec]
    order: list[int] = field(default_factory=list)  # each reading's late row, by arrival
    rows: list[Rows] = field(default_factory=list)
    ts: list[F64] = field(default_factory=list)
    values: list[F64] = field(default_factory=list)
    of_batch: list[npt.NDArray[np.bool_]] = field(default_factory=list)  # places of the batch
    pids: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the patients' (``Engine`` numbers them)
    causes: list[Reading] = field(default_factory=list)  # the earliest late reading reaching it


def reevaluate_after_late(
    late: np.ndarray,
    metric: Metric,
    patients: list[str],
    numbers: Rows,
    readings: list[AcceptedReading],
    buf: MetricBuffer,
    rows: Rows,
    ts: F64,
    plans: Sequence[Plan],
    window: WindowOf,
    arm: Callable[[str, str], None],
) -> list[AlertCandidate]:
    """Held readings after late ones, within their windows, fire if the batch tips them over.

    A held reading is evaluated with and without all of the batch's readings of its
    patient (the latter is what it was last evaluated against), once however many late
    readings reach it; the earliest of those is named as the cause.
    """
    by_row: dict[int, list[int]] = {}
    for i in late:
        by_row.setdefault(int(rows[i]), []).append(int(i))
    # Held readings of every late row, by the windowed rules they are evaluated under:
    # one evaluation per rule for all of them.
    pending: dict[tuple[int, ...], Held] = {}
    for order, (row, idx) in enumerate(by_row.items()):
        pid = patients[idx[0]]
        rules = [r for r in plans[idx[0]].by_metric.get(metric, ()) if r.kind in WINDOWED]
        if not rules:
            continue
        reach = max(KINDS[r.kind].lookback_s(r) for r in rules)
        times = buf.times[row]
        batch_ts = ts[rows == row]
        late_ts = ts[idx]
        reached = (times[:, None] > late_ts) & (times[:, None] <= late_ts + reach)
        of_batch = (times[:, None] == batch_ts).any(axis=1)  # a few: no np.isin set-up
        later = np.flatnonzero(reached.any(axis=1) & ~of_batch)
        if not len(later):
            continue
        causes = np.where(reached[later], late_ts, np.inf).argmin(axis=1)
        held = pending.get(tuple(map(id, rules)))
        if held is None:
            held = pending[tuple(map(id, rules))] = Held(rules)
        n = len(later)
        held.order.extend([order] * n)
        held.rows.append(np.full(n, row, np.intp))
        held.ts.append(times[later])
        held.values.append(buf.values[row, later])
        held.of_batch.append(np.broadcast_to(of_batch, (n, len(of_batch))))
        held.pids.extend([pid] * n)
        held.numbers.extend([int(numbers[idx[0]])] * n)
        held.causes.extend(readings[idx[c]].reading for c in causes.tolist())
    found: list[tuple[int, int, int, AlertCandidate]] = []
    for held in pending.values():
        point_rows = np.concatenate(held.rows)
        point_ts = np.concatenate(held.ts)
        point_values = np.concatenate(held.values)
        with_batch = window(
            metric,
            buf,
            point_rows,
            point_ts,
            point_values,
            rows_in_of(np.array(held.numbers, np.intp)),
        )
        times, values = with_batch.times, with_batch.values
        of_batch = np.concatenate(held.of_batch)[:, : times.shape[1]]
        hidden = np.where(of_batch, np.inf, times)
        before = replace(with_batch, gather=given(hidden, values), _held=None)
        for k, rule in enumerate(held.rules):
            kind = KINDS[rule.kind]
            now = kind.evaluate(rule, with_batch)
            then = kind.evaluate(rule, before)
            for j in np.flatnonzero(now.severity > then.severity).tolist():
                cause, pid = held.causes[j], held.pids[j]
                values_j = {
                    c: float(v)
                    for c, v in zip(buf.components, point_values[j], strict=True)
                    if not math.isnan(v)
                }
                at = datetime.fromtimestamp(float(point_ts[j]), UTC)
                point = Reading(cause.device_id, metric, values_j, at, cause.received_at)
                cand = propose(rule, now.severity[j], now.detail, j, point, pid, cause)
                found.append((held.order[j], k, j, cand))
                arm(pid, rule.id)
    # in the order of the late rows, then of their rules, then of time
    found.sort(key=lambda f: f[:3])
    return [f[3] for f in found]
