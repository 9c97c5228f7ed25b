"""What confirmation before paging reads of a rule: its tier for one reading's values. Pure.

``alerts.confirm`` decides; this module answers, for a rule with a ``confirm`` block,
whether a repeat reading alone still meets it (no hysteresis: the repeat must itself be
past the limit) and how its values read in an explanation.
"""

from __future__ import annotations

from collections.abc import Mapping

from rpm.domain.severity import Severity

from .kinds.threshold import show_values
from .spec import COMPARATORS, RuleSpec


def level(rule: RuleSpec, values: Mapping[str, float]) -> Severity | None:
    """The most severe tier whose conditions ``values`` meet (None: none)."""
    met = [
        tier.severity
        for tier in rule.tiers
        if any(
            (v := values.get(c.component)) is not None and COMPARATORS[c.op](v, rule.p(c.param))
            for c in tier.any
        )
    ]
    return max(met) if met else None


def show(rule: RuleSpec, values: Mapping[str, float]) -> str:
    """The values as a nurse reads them (``SpO2 86%``, ``blood pressure 150/95 mmHg``)."""
    return show_values(rule.metric, values)
