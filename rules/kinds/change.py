"""Change over a window: absolute and/or relative rise or fall against the window's extreme.

Spec: ``component``, ``direction`` (rise or fall), ``severity``; params
``window_hours`` and at least one of ``min_change`` (in the component's unit) and
``min_change_pct``. For a rise the reference is the lowest value in the window
before the reading; for a fall the highest. The heart-failure weight rules are
this kind.
"""

from __future__ import annotations

import numpy as np

from ..kernels import change_verdict, window_extreme
from ..spec import RuleSpec
from .base import (
    EPS,
    F64,
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
    span,
    title_label,
    when,
)


class Change(OwnMetric):
    name = "change"
    required_params = frozenset({"window_hours"})

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        problems.extend(directional_problems(rule))
        if "min_change" not in rule.params and "min_change_pct" not in rule.params:
            problems.append("give min_change and/or min_change_pct")
        if not all(rule.params.get(p, 1) > 0 for p in ("min_change", "min_change_pct")):
            problems.append("min_change and min_change_pct must be positive")
        problems.extend(not_positive(rule, "window_hours"))
        return problems

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.p("window_hours") * HOUR

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return frozenset({"min_change", "min_change_pct"})

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        assert rule.component is not None
        assert rule.severity is not None
        rise = rule.direction == "rise"
        now = w.value(rule.component)
        times, values, rows = w.store()
        ref = np.empty(len(w))
        ref_t = np.empty(len(w))
        window_extreme(
            times,
            values,
            rows,
            w.ts,
            w.component(rule.component),
            self.lookback_s(rule),
            rise,
            ref,
            ref_t,
        )
        n = len(w)
        severity = np.empty(n, np.int8)
        change = np.empty(n)
        pct = np.empty(n)
        change_verdict(
            now,
            ref,
            rise,
            _per_reading(w, rule, "min_change"),
            _per_reading(w, rule, "min_change_pct"),
            "min_change" in rule.params,
            "min_change_pct" in rule.params,
            EPS,
            int(rule.severity),
            severity,
            change,
            pct,
        )
        detail = {"reference": ref, "reference_t": ref_t, "change": change, "pct": pct}
        return Outcome(severity, severity == 0, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        assert rule.component is not None
        d = facts.detail
        now = facts.values[rule.component]
        elapsed = facts.measured_at.timestamp() - d["reference_t"]
        word = "up" if rule.direction == "rise" else "down"
        name = title_label(rule.component)
        change = amount(rule.metric, rule.component, d["change"], difference=True)
        text = (
            f"{name} {word} {change} in {span(elapsed)}: "
            f"{_plain(rule, d['reference'])} → {_plain(rule, now)} "
            f"(from {when(d['reference_t'])} to {when(facts.measured_at)}; "
            f"limit {_limits(rule)} within {span(rule.p('window_hours') * HOUR)}; "
            f"{short_source(rule.source)})."
        )
        evidence = {
            **base_evidence(rule, facts),
            "reference": {"value": d["reference"], "measured_at": when(d["reference_t"])},
            "change": d["change"],
            "change_pct": d["pct"],
            "window_hours": rule.p("window_hours"),
        }
        return text, evidence


def _per_reading(w: Window, rule: RuleSpec, name: str) -> F64:
    """A param as the verdict takes it: one per reading, or one for all (0 when unset)."""
    value = w.p(rule, name) if name in rule.params else 0.0
    return value if isinstance(value, np.ndarray) else np.array([value])


def _plain(rule: RuleSpec, value: float) -> str:
    assert rule.component is not None
    return amount(rule.metric, rule.component, value).split(" (")[0]


def _limits(rule: RuleSpec) -> str:
    assert rule.component is not None
    parts = []
    if "min_change" in rule.params:
        parts.append(amount(rule.metric, rule.component, rule.p("min_change"), difference=True))
    if "min_change_pct" in rule.params:
        parts.append(f"{rule.p('min_change_pct'):g}% of the earlier value")
    return " or ".join(parts)


KIND = Change()
