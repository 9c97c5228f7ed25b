"""Threshold with severity tiers and hysteresis.

Spec: ``tiers`` (each a severity and conditions, any of which puts the reading in
the tier); optional param ``hysteresis``: once fired, the condition only counts as
over when every value is back past its limit by this much (limits move toward
normal), so a value hovering at the limit does not flap the alert.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rpm.domain import Metric

from ..kernels import tier_levels_at
from ..spec import RuleSpec
from .base import (
    Bools,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    amount,
    base_evidence,
    breached,
    condition_params,
    conditions,
    label,
    limits,
    short_source,
    when,
)
from .base import tier_hits as _tier_hits


class Threshold(OwnMetric):
    name = "threshold"
    required_params: frozenset[str] = frozenset()

    def check(self, rule: RuleSpec) -> list[str]:
        problems = []
        if not rule.tiers:
            problems.append("a threshold rule needs at least one tier")
        if rule.params.get("hysteresis", 0) < 0:
            problems.append("hysteresis cannot be negative")
        return problems

    def lookback_s(self, rule: RuleSpec) -> float:
        return 0.0

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return condition_params(rule)

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        severity = _tier_hits(rule, rule.tiers, w)
        shift = rule.params.get("hysteresis", 0.0)
        still = _tier_hits(rule, rule.tiers, w, shift=shift) if shift else severity
        return Outcome(severity, still == 0)

    def evaluate_at(self, rule: RuleSpec, w: Window) -> tuple[Outcome, npt.NDArray[np.intp]]:
        """``evaluate``, and each reading's first condition of the highest tier it met (its
        place in ``rising(rule)``; -1 where none): the interpretation's direction."""
        conds = conditions(rule, rule.tiers)
        n = len(w)
        severity, at = np.empty(n, np.int8), np.empty(n, np.intp)
        current = np.ascontiguousarray(w.current)  # one compiled layout
        tier_levels_at(current, conds.comp, conds.op, limits(conds, w), conds.level, severity, at)
        shift = rule.params.get("hysteresis", 0.0)
        still = _tier_hits(rule, rule.tiers, w, shift=shift) if shift else severity
        return Outcome(severity, still == 0), at

    def rising(self, rule: RuleSpec) -> Bools:
        """Per condition of the rule's tiers (in order): an upper limit (``>``, ``>=``)."""
        return conditions(rule, rule.tiers).toward_normal < 0

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        reasons = breached(rule, rule.tiers, facts.values)
        text = (
            f"{rule.title}: {show_values(rule.metric, facts.values)} at {when(facts.measured_at)}; "
            f"{'; '.join(reasons)} ({short_source(rule.source)})."
        )
        return text, {**base_evidence(rule, facts), "breached": reasons}


def show_values(metric: Metric, values: object) -> str:
    from rpm.domain import METRICS

    v = dict(values)  # type: ignore[call-overload]
    if "systolic" in v and "diastolic" in v:
        return f"blood pressure {v['systolic']:g}/{v['diastolic']:g} mmHg"
    parts = [
        f"{label(c.name)} {amount(metric, c.name, v[c.name])}"
        for c in METRICS[metric].components
        if c.name in v
    ]
    return ", ".join(parts)


KIND = Threshold()
