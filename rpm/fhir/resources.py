"""Our patients, devices, alerts and SMS as FHIR R4 resources (plain JSON). Pure.

- Patient: ``identifier`` (``urn:rpm:patient``, the same system the EHR push uses to name
  the subject), ``name.text``, the mobile number as ``telecom``, ``communication.language``.
- Device: ``identifier`` (``urn:rpm:device``), ``manufacturer``, ``serialNumber``, the kind
  as ``type.text``, ``status`` (retired: inactive), ``patient`` (the current binding).
- DetectedIssue, one per alert (one per clinical event): the leading rule as ``code``,
  severity, the plain-language explanation as ``detail``, the readings that caused it as
  Observations in ``evidence.detail``; when several rules contributed, one coded ``evidence``
  entry per rule with its reading, and their findings in ``detail``; and
  acknowledgement and resolution as ``mitigation``. ``preliminary`` until a nurse has seen it
  (acknowledged or resolved), then ``final``.
- Communication, one per patient SMS: sent or received, its delivery status, the text, and
  ``about`` the alert (DetectedIssue) it told the patient of.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from rpm.domain import Severity

from .bundles import DEVICE_IDENTIFIER_SYSTEM, PATIENT_IDENTIFIER_SYSTEM
from .mapping import logical_id, observation_id

RULE_SYSTEM = "urn:rpm:rule"
ALERT_IDENTIFIER_SYSTEM = "urn:rpm:alert"
SMS_IDENTIFIER_SYSTEM = "urn:rpm:sms"
DEVICE_KIND_SYSTEM = "urn:rpm:device-kind"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"

# DetectedIssue.severity (R4 value set detectedissue-severity: high | moderate | low).
_SEVERITY: Mapping[str, str] = MappingProxyType(
    {
        Severity.CRITICAL.name: "high",
        Severity.HIGH.name: "high",
        Severity.MEDIUM.name: "moderate",
        Severity.LOW.name: "low",
    }
)
# Twilio message status -> Communication.status (R4 event-status).
_SMS_STATUS: Mapping[str, str] = MappingProxyType(
    {
        "accepted": "preparation",
        "scheduled": "preparation",
        "queued": "in-progress",
        "sending": "in-progress",
        "sent": "in-progress",
        "receiving": "in-progress",
        "received": "completed",
        "delivered": "completed",
        "read": "completed",
        "partially_delivered": "completed",
        "undelivered": "stopped",
        "failed": "not-done",
        "canceled": "not-done",
    }
)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != []}


def patient(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Patient from a ``patients`` row (id, display_name, phone, language)."""
    return _drop_none(
        {
            "resourceType": "Patient",
            "id": logical_id(row["id"]),
            "identifier": [{"system": PATIENT_IDENTIFIER_SYSTEM, "value": row["id"]}],
            "active": True,
            "name": [{"text": row["display_name"]}] if row.get("display_name") else None,
            "telecom": (
                [{"system": "sms", "value": row["phone"], "use": "mobile"}]
                if row.get("phone")
                else None
            ),
            "communication": (
                [{"language": {"coding": [_language(row["language"])]}, "preferred": True}]
                if row.get("language")
                else None
            ),
        }
    )


def _language(tag: str) -> dict[str, str]:
    # BCP 47 (R4 binds Patient.communication.language to urn:ietf:bcp:47).
    return {"system": "urn:ietf:bcp:47", "code": tag}


def device(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Device from a ``devices`` row (id, kind, vendor, serial, retired_at, patient_id)."""
    return _drop_none(
        {
            "resourceType": "Device",
            "id": logical_id(row["id"]),
            "identifier": [{"system": DEVICE_IDENTIFIER_SYSTEM, "value": row["id"]}],
            "status": "inactive" if row.get("retired_at") else "active",
            "manufacturer": row.get("vendor"),
            "serialNumber": row.get("serial"),
            "type": {
                "coding": [{"system": DEVICE_KIND_SYSTEM, "code": row["kind"]}],
                "text": row["kind"].replace("_", " "),
            },
            "patient": (
                {"reference": "Patient/" + logical_id(row["patient_id"])}
                if row.get("patient_id")
                else None
            ),
        }
    )


def detected_issue(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A DetectedIssue from an alert (``rpm.storage.alerts.get`` row)."""
    uids = dict.fromkeys(
        str(u) for u in (alert.get("first_reading_uid"), alert.get("last_reading_uid")) if u
    )
    reviewed = alert.get("acknowledged_at") is not None or alert.get("resolved_at") is not None
    # One clinical event, one resource: the rules that contributed besides the leading one
    # (``code``) are evidence entries coded by rule, and the detail names them.
    contributions = list(alert.get("contributions") or ())
    others = [c for c in contributions if c.get("rule_id") != alert["rule_id"]]
    mitigation = []
    if alert.get("acknowledged_at") is not None:
        mitigation.append(
            _mitigation("acknowledged", alert["acknowledged_at"], alert.get("acknowledged_by"))
        )
    if alert.get("resolved_at") is not None:
        mitigation.append(
            _mitigation(
                "resolved",
                alert["resolved_at"],
                alert.get("resolved_by"),
                alert.get("resolution_note"),
            )
        )
    return _drop_none(
        {
            "resourceType": "DetectedIssue",
            "id": str(alert["id"]),
            "identifier": [{"system": ALERT_IDENTIFIER_SYSTEM, "value": str(alert["id"])}],
            "status": "final" if reviewed else "preliminary",
            "code": {
                "coding": [{"system": RULE_SYSTEM, "code": alert["rule_id"]}],
                "text": alert["title"],
            },
            "severity": _SEVERITY.get(str(alert["severity"]), "moderate"),
            "patient": {"reference": "Patient/" + logical_id(alert["patient_id"])},
            "identifiedDateTime": _iso(alert["opened_at"]),
            "detail": _detail(alert, others),
            "evidence": (
                [{"detail": [{"reference": f"Observation/{observation_id(u)}"} for u in uids]}]
                if uids
                else []
            )
            + [_contribution(c) for c in (contributions if others else [])]
            or None,
            "mitigation": mitigation,
        }
    )


def _detail(alert: Mapping[str, Any], others: list[Mapping[str, Any]]) -> str | None:
    text: str | None = alert.get("explanation")
    if not others:
        return text
    also = "; ".join(f"{c['title']}: {c['explanation']}" for c in others)
    return f"{text} Also: {also}" if text else also


def _contribution(c: Mapping[str, Any]) -> dict[str, Any]:
    """An evidence entry for one contributing rule: its code, its finding, its reading."""
    out: dict[str, Any] = {
        "code": [
            {
                "coding": [{"system": RULE_SYSTEM, "code": c["rule_id"]}],
                "text": f"{c['title']}: {c['explanation']}",
            }
        ]
    }
    if c.get("reading_uid"):
        out["detail"] = [{"reference": f"Observation/{observation_id(c['reading_uid'])}"}]
    return out


def _mitigation(
    action: str, at: datetime, actor: str | None, note: str | None = None
) -> dict[str, Any]:
    text = action if not note else f"{action}: {note}"
    out: dict[str, Any] = {
        "action": {"coding": [{"system": "urn:rpm:alert-action", "code": action}], "text": text},
        "date": at.isoformat(),
    }
    if actor:
        out["author"] = {"display": actor}
    return out


def communication(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Communication from a patient's ``sms_messages`` row (sent or received)."""
    inbound = message["direction"] == "inbound"
    patient_ref = {"reference": "Patient/" + logical_id(message["patient_id"])}
    status = _SMS_STATUS.get(str(message["status"]), "unknown")
    category = "alert" if message.get("alert_id") is not None else "notification"
    delivered = message["status"] in ("delivered", "read", "received")
    error = message.get("error_code")
    return _drop_none(
        {
            "resourceType": "Communication",
            "id": str(message["id"]),
            "identifier": (
                [{"system": SMS_IDENTIFIER_SYSTEM, "value": message["twilio_sid"]}]
                if message.get("twilio_sid")
                else None
            ),
            "status": status,
            "statusReason": (
                {
                    "text": f"{message['status']} (Twilio error {error})"
                    if error
                    else message["status"]
                }
                if status in ("not-done", "stopped")
                else None
            ),
            "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": category}]}],
            "medium": [{"text": "SMS"}],
            "subject": patient_ref,
            "about": (
                [{"reference": f"DetectedIssue/{message['alert_id']}"}]
                if message.get("alert_id") is not None
                else None
            ),
            "sent": _iso(message["created_at"]) if not inbound else None,
            "received": (
                _iso(message["created_at"])
                if inbound
                else (_iso(message.get("updated_at")) if delivered else None)
            ),
            "recipient": [patient_ref] if not inbound else None,
            "sender": patient_ref if inbound else None,
            "payload": [{"contentString": message["body"]}] if message.get("body") else None,
        }
    )
