"""Rule kinds: one pure evaluator per kind, found in a registry keyed by kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from rpm.domain import METRICS, AcceptedReading

from .candidate import AlertCandidate
from .spec import COMPARATORS, RuleSpec

Evaluator = Callable[[RuleSpec, AcceptedReading], AlertCandidate | None]


def evaluate_threshold(rule: RuleSpec, accepted: AcceptedReading) -> AlertCandidate | None:
    """Fire when any condition of the rule holds for this reading."""
    reading = accepted.reading
    spec = METRICS[reading.metric]
    reasons: list[str] = []
    breached: dict[str, dict[str, float | str]] = {}
    for cond in rule.conditions:
        value = reading.values.get(cond.component)
        if value is None:
            continue
        limit = rule.params[cond.param]
        if COMPARATORS[cond.op](value, limit):
            component = spec.component(cond.component)
            unit = _display_unit(component.ucum if component else "")
            reasons.append(f"{cond.component} {value:g} {cond.op} {limit:g} {unit}".rstrip())
            breached[cond.component] = {"value": value, "op": cond.op, "threshold": limit}
    if not reasons:
        return None
    shown = _show_values(accepted)
    when = reading.measured_at.strftime("%Y-%m-%d %H:%M %Z").strip()
    explanation = f"{rule.title}: {shown} at {when}; {'; '.join(reasons)} ({_short(rule.source)})."
    return AlertCandidate(
        patient_id=accepted.patient_id,
        rule_id=rule.id,
        severity=rule.severity,
        title=rule.title,
        explanation=explanation,
        evidence={
            "kind": rule.kind,
            "metric": reading.metric.value,
            "values": dict(reading.values),
            "breached": breached,
            "params": dict(rule.params),
            "measured_at": reading.measured_at.isoformat(),
            "reading_uid": str(reading.uid),
            "device_id": reading.device_id,
            "source": rule.source,
        },
        measured_at=reading.measured_at,
        reading_uid=reading.uid,
        advice=rule.advice,
    )


def _show_values(accepted: AcceptedReading) -> str:
    r = accepted.reading
    v = r.values
    if "systolic" in v and "diastolic" in v:
        return f"blood pressure {v['systolic']:g}/{v['diastolic']:g} mmHg"
    spec = METRICS[r.metric]
    parts = []
    for c in spec.components:
        if c.name in v:
            parts.append(f"{c.name} {v[c.name]:g} {_display_unit(c.ucum)}".rstrip())
    return ", ".join(parts)


def _display_unit(ucum: str) -> str:
    return {"mm[Hg]": "mmHg", "/min": "/min", "Cel": "°C"}.get(ucum, ucum)


def _short(source: str) -> str:
    """First words of a citation, enough for a nurse to recognise it."""
    head = source.split(".")[0]
    return head if len(head) <= 60 else head[:57] + "..."


KINDS: Mapping[str, Evaluator] = MappingProxyType({"threshold": evaluate_threshold})
