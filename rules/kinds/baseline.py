"""Deviation from the patient's own baseline: median and MAD over a trailing window.

Spec: ``component``, ``direction`` (rise or fall: which deviation is bad),
``severity``; params ``window_days`` (the trailing window), ``min_readings`` (the
baseline needs this many), ``min_deviation`` (in the component's unit), and
optionally ``mad_multiplier`` (the deviation must also exceed k x 1.4826 x MAD,
the robust standard deviation) and ``skip_recent_hours`` (leave the most recent
hours out of the baseline so a slow deterioration does not become its own
reference). Median and MAD are robust to the odd bad reading (Leys et al., J Exp
Soc Psychol 2013;49:764-766).
"""

from __future__ import annotations

import numpy as np

from ..kernels import baseline_verdict, robust_center
from ..spec import RuleSpec
from .base import (
    DAY,
    EPS,
    HOUR,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    amount,
    base_evidence,
    directional_problems,
    not_positive,
    short_source,
    title_label,
)

MAD_TO_SD = 1.4826  # consistency constant for normally distributed data


class Baseline(OwnMetric):
    name = "baseline"
    required_params = frozenset({"window_days", "min_readings", "min_deviation"})

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        problems.extend(directional_problems(rule))
        if rule.params.get("min_readings", 0) < 3:
            problems.append("min_readings must be at least 3")
        problems.extend(not_positive(rule, "window_days"))
        return problems

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return frozenset()

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.p("window_days") * DAY

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        assert rule.component is not None
        assert rule.severity is not None
        n_rows = len(w)
        skip = rule.params.get("skip_recent_hours", 0.0) * HOUR
        times, values, rows = w.store()
        count = np.empty(n_rows)
        median = np.empty(n_rows)
        mad = np.empty(n_rows)
        robust_center(
            times,
            values,
            rows,
            w.ts,
            w.component(rule.component),
            self.lookback_s(rule),
            skip,
            int(rule.p("min_readings")),
            count,
            median,
            mad,
        )
        severity = np.empty(n_rows, np.int8)
        deviation = np.empty(n_rows)
        needed = np.empty(n_rows)
        mad_sd = rule.params.get("mad_multiplier", np.nan) * MAD_TO_SD
        baseline_verdict(
            count,
            median,
            mad,
            w.value(rule.component),
            rule.p("min_readings"),
            rule.p("min_deviation"),
            mad_sd,
            rule.direction == "rise",
            EPS,
            int(rule.severity),
            severity,
            deviation,
            needed,
        )
        detail = {
            "median": median,
            "mad": mad,
            "deviation": deviation,
            "needed": needed,
            "baseline_readings": count,
        }
        return Outcome(severity, severity == 0, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        assert rule.component is not None
        d = facts.detail
        name = title_label(rule.component)
        word = "above" if rule.direction == "rise" else "below"
        now = facts.values[rule.component]

        def points(value: float) -> str:  # a difference: percentage points for SpO2
            assert rule.component is not None
            return amount(rule.metric, rule.component, value, difference=True)

        text = (
            f"{name} {amount(rule.metric, rule.component, now)} is "
            f"{points(d['deviation'])} {word} this patient's "
            f"{rule.p('window_days'):g}-day median of "
            f"{amount(rule.metric, rule.component, d['median'])} "
            f"(MAD {points(d['mad'])}, {int(d['baseline_readings'])} readings); limit "
            f"{points(d['needed'])} ({short_source(rule.source)})."
        )
        return text, {**base_evidence(rule, facts), **dict(d)}


KIND = Baseline()
