"""The outbox items a unit of work writes with its readings and alerts (the workers in
``rpm.workers`` and ``rpm.fhir.push`` carry them out)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from alerts.lifecycle import Action
from rpm.domain import AcceptedReading, AlertCandidate, Severity
from rpm.storage.alerts import AppliedDecision

# Decisions that change what the dashboard shows of an episode (besides opening it).
CHANGES = frozenset({Action.ESCALATE, Action.JOIN, Action.LATE_EVIDENCE})


def patient_sms_payload(alert_id: int, c: AlertCandidate, *, template: str) -> dict[str, Any]:
    """An outbox item for the patient's SMS; the worker renders it in the patient's language
    at send time and applies consent, quiet hours and the daily cap (urgent ones excepted)."""
    return {
        "recipient": "patient",
        "patient_id": c.patient_id,
        "alert_id": alert_id,
        "template": template,
        "rule_id": c.rule_id,
        "severity": c.severity.name,
        "urgent": c.severity >= Severity.HIGH,
        "title": c.title,
        "advice": {"en": c.advice, **c.advice_i18n},
    }


def fhir_push_item(new: Sequence[AcceptedReading]) -> tuple[str, str, dict[str, Any]]:
    """One outbox item per batch: the new readings to push to the EHR as one transaction
    Bundle, named by primary key (device, metric, measured time)."""
    keys = sorted(
        (a.reading.device_id, a.reading.metric.value, a.reading.measured_at.isoformat())
        for a in new
    )
    digest = hashlib.sha256(orjson.dumps(keys)).hexdigest()[:32]
    return ("fhir", f"fhir:readings:{digest}", {"readings": [list(k) for k in keys]})


@dataclass(slots=True)
class FollowUps:
    """What a unit of work's alert decisions send on: patient SMS items, live notes for the
    dashboard, the alerts opened and changed, and the decisions worth a log line."""

    sms: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    reported: list[AppliedDecision] = field(default_factory=list)


def follow_ups(applied: Sequence[AppliedDecision]) -> FollowUps:
    """The outbox items and live notes for what the alert policy decided."""
    out = FollowUps()
    for a in applied:
        d = a.decision
        c = d.candidate
        if d.notify_patient:
            out.sms.append(
                (
                    "sms",
                    f"sms:alert:{a.alert_id}:open",
                    patient_sms_payload(a.alert_id, c, template="alert"),
                )
            )
        if d.action is Action.OPEN:
            out.opened.append(a.alert_id)
        elif d.action in CHANGES:
            out.changed.append(a.alert_id)
        else:
            continue
        out.reported.append(a)
        out.notes.append(
            {
                "alert_id": a.alert_id,
                "patient_id": c.patient_id,
                "action": d.action.value,
                "state": d.new_state.value,
                "severity": c.severity.name,
            }
        )
    return out
