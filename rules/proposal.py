"""Candidates as the engine proposes them: explanation and reading identity built lazily."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import numpy as np

from rpm.domain import Reading, reading_uid

from .buffers import F64
from .candidate import AlertCandidate
from .kinds import KINDS, Facts
from .spec import RuleSpec, Severity

_SEVERITIES = {int(s): s for s in Severity}  # Severity(n) costs an enum call


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
    trigger = cause or reading
    j = int(j)

    def uid_of() -> uuid.UUID:
        return reading_uid(trigger.device_id, trigger.metric, trigger.measured_at)

    def render() -> tuple[str, dict[str, object]]:
        facts = Facts(
            reading.measured_at,
            reading.values,
            {k: float(v[j]) for k, v in detail.items()},
            int(severity),
        )
        explanation, evidence = KINDS[rule.kind].explain(rule, facts)
        evidence |= {"reading_uid": str(candidate.reading_uid), "device_id": trigger.device_id}
        if cause is not None:
            evidence["late_reading_at"] = cause.measured_at.isoformat()
            explanation += (
                f" Re-evaluated after a late reading from {cause.measured_at:%Y-%m-%d %H:%M} UTC."
            )
        return explanation, evidence

    candidate = AlertCandidate(
        patient_id=patient_id,
        rule_id=rule.id,
        severity=_SEVERITIES[int(severity)],
        title=rule.title,
        measured_at=reading.measured_at,
        render=render,
        uid_of=uid_of,
        advice=rule.advice,
        advice_i18n=rule.advice_i18n,
    )
    return candidate
