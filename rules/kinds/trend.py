"""Trend: the least-squares slope of a component over the last N days.

Spec: ``component``, ``direction`` (rise or fall), ``severity``; params
``window_days``, ``min_readings``, optional ``min_span_days`` (the readings must cover
at least this much time: a burst of re-measurements has no slope worth a day), and
``min_slope_per_day`` (a positive number in
the component's unit per day; for a fall the slope must be at or below its
negative). The fit uses every reading in the window up to and including this one.
"""

from __future__ import annotations

import numpy as np

from ..kernels import least_squares, trend_verdict
from ..spec import RuleSpec
from .base import (
    DAY,
    EPS,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    amount,
    base_evidence,
    directional_problems,
    not_positive,
    short_source,
    span,
    title_label,
)


class Trend(OwnMetric):
    name = "trend"
    required_params = frozenset({"window_days", "min_readings", "min_slope_per_day"})

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        problems.extend(directional_problems(rule))
        if rule.params.get("min_readings", 0) < 3:
            problems.append("min_readings must be at least 3")
        problems.extend(not_positive(rule, "window_days", "min_slope_per_day"))
        return problems

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return frozenset()

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.p("window_days") * DAY

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        assert rule.component is not None
        assert rule.severity is not None
        times, values, rows = w.store()
        b = len(w)
        n, slope, sxx, first = np.empty(b), np.empty(b), np.empty(b), np.empty(b)
        comp = w.component(rule.component)
        least_squares(
            times, values, rows, w.ts, comp, self.lookback_s(rule), DAY, n, slope, sxx, first
        )
        severity = np.empty(b, np.int8)
        span = np.empty(b)
        trend_verdict(
            n,
            slope,
            sxx,
            first,
            w.value(rule.component),
            rule.p("min_readings"),
            rule.params.get("min_span_days", 0.0),
            rule.p("min_slope_per_day"),
            rule.direction == "rise",
            EPS,
            int(rule.severity),
            severity,
            span,
        )
        detail = {"slope_per_day": slope, "readings": n, "span_days": span}
        return Outcome(severity, severity == 0, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        assert rule.component is not None
        d = facts.detail
        word = "rising" if rule.direction == "rise" else "falling"
        name = title_label(rule.component)
        per_day = amount(rule.metric, rule.component, abs(d["slope_per_day"]), difference=True)
        limit = amount(rule.metric, rule.component, rule.p("min_slope_per_day"), difference=True)
        text = (
            f"{name} {word} {per_day} per day over {span(d['span_days'] * DAY)} "
            f"({int(d['readings'])} readings, least-squares fit; latest "
            f"{amount(rule.metric, rule.component, facts.values[rule.component])}); "
            f"limit {limit} per day over {rule.p('window_days'):g} days "
            f"({short_source(rule.source)})."
        )
        return text, {**base_evidence(rule, facts), **dict(d)}


KIND = Trend()
