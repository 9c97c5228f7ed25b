"""A reading's interpretation by its patient's threshold rules (HL7 v3
ObservationInterpretation: ``HH``, ``H``, ``N``, ``L``, ``LL``), without state."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from rpm.domain import AcceptedReading, Metric, Severity

from .buffers import F64, MetricBuffer
from .kinds import Window
from .kinds.base import condition_holds, given
from .plan import Plan
from .spec import RuleSpec


def _no_latest(metric: Metric, component: str, fresh: float) -> tuple[F64, F64]:
    raise AssertionError("threshold rules read no other metric")


def interpret(
    readings: Sequence[AcceptedReading],
    plans: Sequence[Plan],
    buffer_of: Callable[[Metric], MetricBuffer],
) -> list[str | None]:
    """Each reading's interpretation by the threshold rules of its plan (``plans[i]``):
    ``HH``/``LL`` for a critical tier, ``H``/``L`` for another tier (by the direction of
    the condition met), ``N`` when threshold rules looked and none fired, None when no
    threshold rule watches the metric. ``buffer_of`` gives a metric's components."""
    out: list[str | None] = [None] * len(readings)
    groups: dict[tuple[Metric, int], tuple[tuple[RuleSpec, ...], list[int]]] = {}
    for i, (a, plan) in enumerate(zip(readings, plans, strict=True)):
        metric = a.reading.metric
        rules = tuple(r for r in plan.by_metric.get(metric, ()) if r.kind == "threshold")
        if rules:
            groups.setdefault((metric, id(plan)), (rules, []))[1].append(i)
    for (metric, _), (rules, idx) in groups.items():
        buf = buffer_of(metric)
        comps = buf.components
        current = np.array(
            [[readings[i].reading.values.get(c, math.nan) for c in comps] for i in idx]
        )
        n = len(idx)
        w = Window(
            metric,
            np.zeros(n),
            current,
            given(np.zeros((n, 0)), np.zeros((n, 0, len(comps)))),
            buf.index,
            _no_latest,
        )
        codes = np.full(n, "N", dtype=object)
        worst = np.zeros(n, np.int8)
        for rule in rules:
            for tier in rule.tiers:
                for cond in tier.any:
                    hit = condition_holds(rule, cond, w.value(cond.component))
                    better = hit & (worst < tier.severity)
                    if better.any():
                        critical = tier.severity >= Severity.CRITICAL
                        code = (
                            ("HH" if critical else "H")
                            if cond.rising
                            else ("LL" if critical else "L")
                        )
                        codes[better] = code
                        worst[better] = tier.severity
        for j, i in enumerate(idx):
            out[i] = str(codes[j])
    return out
