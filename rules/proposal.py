"""Candidates as the engine proposes them: explanation and reading identity built lazily;
and those of the missing-data rules, which no reading triggers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime

import numpy as np

from rpm.domain import AlertCandidate, Metric, Reading, Severity, reading_uid

from .buffers import F64
from .kinds import KINDS, Facts
from .kinds.missing import Silence, evaluate_missing
from .plan import Plan
from .spec import RuleSpec

_SEVERITIES = {int(s): s for s in Severity}  # Severity(n) costs an enum call


class Proposed(AlertCandidate):
    """A candidate as the engine proposes it: the fired reading's row of the rule's
    outcome, rendered into text and evidence (and the reading's identity computed) only
    when read. No closures: one object per candidate, little for the collector."""

    __slots__ = ("_cause", "_detail", "_j", "_reading", "_rule")

    def __init__(
        self,
        rule: RuleSpec,
        severity: int,
        detail: Mapping[str, F64],
        j: int,
        reading: Reading,
        patient_id: str,
        cause: Reading | None,
    ) -> None:
        super().__init__(
            patient_id=patient_id,
            rule_id=rule.id,
            severity=_SEVERITIES[severity],
            title=rule.title,
            measured_at=reading.measured_at,
            explanation=None,  # rendered when read
            advice=rule.advice,
            advice_i18n=rule.advice_i18n,
        )
        self._rule = rule
        self._detail = detail
        self._j = j
        self._reading = reading
        self._cause = cause

    @property
    def reading_uid(self) -> uuid.UUID:
        if self._uid is None:
            trigger = self._cause or self._reading
            self._uid = reading_uid(trigger.device_id, trigger.metric, trigger.measured_at)
        return self._uid

    def _rendering(self) -> tuple[str, dict[str, object]]:
        if self._rendered is None:
            rule, reading, cause, j = self._rule, self._reading, self._cause, self._j
            facts = Facts(
                reading.measured_at,
                reading.values,
                {k: float(v[j]) for k, v in self._detail.items()},
                int(self.severity),
            )
            explanation, evidence = KINDS[rule.kind].explain(rule, facts)
            trigger = cause or reading
            evidence |= {"reading_uid": str(self.reading_uid), "device_id": trigger.device_id}
            if cause is not None:
                evidence["late_reading_at"] = cause.measured_at.isoformat()
                explanation += (
                    f" Re-evaluated after a late reading from {cause.measured_at:%Y-%m-%d %H:%M}"
                    " UTC."
                )
            self._rendered = (explanation, evidence)
        return self._rendered  # type: ignore[return-value]


def propose(
    rule: RuleSpec,
    severity: int,
    detail: Mapping[str, F64],
    j: int | np.integer,
    reading: Reading,
    patient_id: str,
    cause: Reading | None = None,
) -> AlertCandidate:
    """A rule's candidate for one fired reading; its text and reading identity are built
    only when read (most candidates recur on an open episode and are never shown)."""
    return Proposed(rule, int(severity), detail, int(j), reading, patient_id, cause)


def missing_candidates(
    plan: Plan, patient_id: str, silence_of: Callable[[Metric], Silence], now: datetime
) -> list[AlertCandidate]:
    """Candidates of a plan's missing-data rules at ``now`` (no reading: no uid)."""
    out = []
    for rule in plan.rules:
        if rule.kind != "missing":
            continue
        facts = evaluate_missing(rule, silence_of(rule.metric), now)
        if facts is None:
            continue
        assert rule.severity is not None
        explanation, evidence = KINDS["missing"].explain(
            rule, Facts(now, {}, facts, int(rule.severity))
        )
        out.append(
            AlertCandidate(
                patient_id=patient_id,
                rule_id=rule.id,
                severity=rule.severity,
                title=rule.title,
                explanation=explanation,
                evidence=evidence,
                measured_at=now,
                reading_uid=None,
                advice=rule.advice,
                advice_i18n=rule.advice_i18n,
            )
        )
    return out
