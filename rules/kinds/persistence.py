"""Persistence: the condition holds in k of the last n readings, or for a sustained time.

Spec: exactly one tier (severity and conditions, as for thresholds) and either
params ``k`` and ``n`` (k of the last n readings up to and including this one meet
the condition) or ``sustained_hours`` (every reading for at least that long meets
it: the unbroken run of breaching readings ending at this one spans the duration).
"""

from __future__ import annotations

import numpy as np

from ..kernels import breaching_count, breaching_run
from ..spec import RuleSpec
from .base import (
    EPS,
    HOUR,
    Facts,
    Outcome,
    OwnMetric,
    Window,
    base_evidence,
    breached,
    condition_params,
    conditions,
    levels_met,
    limits,
    short_source,
    span,
    when,
)
from .threshold import show_values


class Persistence(OwnMetric):
    name = "persistence"
    required_params: frozenset[str] = frozenset()

    def check(self, rule: RuleSpec) -> list[str]:
        p = rule.params
        problems = []
        if len(rule.tiers) != 1:
            problems.append("a persistence rule has exactly one tier")
        counted = "k" in p or "n" in p
        if counted == ("sustained_hours" in p):
            problems.append("give either k and n, or sustained_hours")
        if counted and not (1 <= p.get("k", 0) <= p.get("n", 0) <= 64):
            problems.append("need 1 <= k <= n <= 64")
        if counted and not (
            float(p.get("k", 0)).is_integer() and float(p.get("n", 0)).is_integer()
        ):
            problems.append("k and n count readings: whole numbers")
        if p.get("sustained_hours", 1) <= 0:
            problems.append("sustained_hours must be positive")
        return problems

    def lookback_s(self, rule: RuleSpec) -> float:
        return rule.params.get("sustained_hours", 0.0) * HOUR or 14 * 86400.0

    def varying(self, rule: RuleSpec) -> frozenset[str]:
        return condition_params(rule)

    def evaluate(self, rule: RuleSpec, w: Window) -> Outcome:
        n = len(w)
        tier = rule.tiers[0]
        conds = conditions(rule, rule.tiers)
        limit = limits(conds, w)
        own = levels_met(conds, limit, w) > 0
        times, values, rows = w.store()
        if "k" in rule.params:
            count = np.empty(n)
            seen = np.empty(n)
            last_n = int(rule.params["n"])
            breaching_count(
                times, values, rows, w.ts, conds.comp, conds.op, limit, last_n, count, seen
            )
            fires = own & (count >= rule.params["k"])
            detail = {"count": count, "of": seen}
        else:
            duration = np.empty(n)
            breaching_run(times, values, rows, w.ts, conds.comp, conds.op, limit, duration)
            fires = own & (duration >= rule.params["sustained_hours"] * HOUR - EPS)
            detail = {"duration_s": duration}
        severity = np.where(fires, np.int8(tier.severity), np.int8(0)).astype(np.int8)
        return Outcome(severity, ~own, detail)

    def explain(self, rule: RuleSpec, facts: Facts) -> tuple[str, dict[str, object]]:
        reasons = breached(rule, rule.tiers, facts.values)
        d = facts.detail
        if "count" in d:
            how = f"{int(d['count'])} of the last {int(d['of'])} readings"
        else:
            how = f"every reading for {span(d['duration_s'])}"
        text = (
            f"{rule.title}: {how} met {' or '.join(reasons) or 'the condition'}; latest "
            f"{show_values(rule.metric, facts.values)} at {when(facts.measured_at)} "
            f"({short_source(rule.source)})."
        )
        return text, {**base_evidence(rule, facts), "breached": reasons, **dict(d)}


KIND = Persistence()
