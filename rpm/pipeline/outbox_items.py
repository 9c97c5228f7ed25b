"""The outbox items a unit of work writes with its readings and alerts (the workers in
``rpm.workers`` and ``rpm.fhir.push`` carry them out)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from rpm.domain import AcceptedReading, AlertCandidate, Severity


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
