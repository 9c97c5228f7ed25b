"""Whether, and when, an SMS goes out. Pure (what an inbound SMS asks for: ``keywords``).

For each outbox item the worker asks :func:`decide` for a verdict:

- ``Drop(reason)``: recorded as failed with that reason, never sent. No phone number, no SMS
  consent, opted out (STOP), an escalation whose alert was acknowledged or resolved meanwhile,
  a non-urgent patient message whose alert was resolved meanwhile, and non-urgent patient
  messages past the daily cap for the patient's local day ("daily cap": dropped, not merged;
  the nurse sees every alert on the dashboard, and the patient already had that many texts).
  A campaign message (template ``campaign``) counts every message of the day against the cap,
  alerts first, and is dropped while the patient has an open high or critical episode,
  except the next question of a check-in the patient is answering (``response_id`` set):
  the patient is replying now, and their answers are what the nurse will want.
- ``Defer(until, reason)``: a non-urgent patient message in the patient's quiet hours waits
  for their end (local time of the patient's time zone).
- ``SendNow``: everything else. Urgent messages (critical and high severity, escalations to
  staff, and legacy ``body`` items, which carry no severity) bypass quiet hours and the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rpm.domain import Severity
from rpm.domain.errors import BadWork

Audience = Literal["patient", "staff"]


# Templates each audience may be sent ("legacy" = a ready ``body``).
_TEMPLATES: Mapping[Audience, frozenset[str]] = MappingProxyType(
    {
        "patient": frozenset({"alert", "campaign", "legacy", "consent", "remeasure"}),
        "staff": frozenset({"escalation"}),
    }
)


@dataclass(frozen=True, slots=True)
class SmsWork:
    """An SMS outbox payload, checked once."""

    audience: Audience
    template: str
    patient_id: str | None
    staff_id: str | None = None
    alert_id: int | None = None
    rule_id: str | None = None
    severity: Severity | None = None
    urgent: bool = True
    title: str = ""
    advice: Mapping[str, str] = field(default_factory=dict)
    tier: int | None = None
    body: str | None = None
    campaign: str | None = None  # template "campaign": which campaign, version and occurrence
    campaign_version: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict)  # the patient's figures
    expires_at: datetime | None = None  # a campaign message is stale from then on
    # A check-in's next question (template "campaign"): which question of which response.
    question: str | None = None
    response_id: int | None = None

    @property
    def is_campaign(self) -> bool:
        return self.template == "campaign"

    def __post_init__(self) -> None:
        if self.template not in _TEMPLATES[self.audience]:
            raise BadWork(f"template {self.template!r} is not for {self.audience}")
        if self.audience == "patient" and not self.patient_id:
            raise BadWork("patient message without patient_id")
        if self.audience == "staff" and (not self.staff_id or self.alert_id is None):
            raise BadWork("staff message without staff_id or alert_id")
        if self.template not in ("legacy", "campaign", "consent") and self.severity is None:
            raise BadWork("message without severity")
        if self.is_campaign and (not self.campaign or self.campaign_version is None or self.urgent):
            raise BadWork("a campaign message names its campaign and version, and is not urgent")

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SmsWork:
        """Parse an outbox payload (patient, staff or legacy ``{patient_id, alert_id, body}``)."""
        try:
            if "recipient" not in payload and "body" in payload:
                return cls(
                    "patient",
                    "legacy",
                    str(payload["patient_id"]),
                    alert_id=_optional_int(payload.get("alert_id")),
                    urgent=bool(payload.get("urgent", True)),
                    body=str(payload["body"]),
                )
            audience: Audience
            match payload.get("recipient"):
                case "patient":
                    audience = "patient"
                case "staff":
                    audience = "staff"
                case other:
                    raise BadWork(f"unknown recipient {other!r}")
            advice = payload.get("advice") or {}
            if not isinstance(advice, Mapping):
                raise BadWork("advice must be an object of language: text")
            context = payload.get("context") or {}
            if not isinstance(context, Mapping):
                raise BadWork("context must be an object")
            severity = payload.get("severity")
            return cls(
                audience,
                str(payload.get("template", "")),
                _optional_str(payload.get("patient_id")),
                staff_id=_optional_str(payload.get("staff_id")),
                alert_id=_optional_int(payload.get("alert_id")),
                rule_id=_optional_str(payload.get("rule_id")),
                severity=None if severity is None else Severity[str(severity).upper()],
                urgent=audience == "staff" or bool(payload.get("urgent", False)),
                title=str(payload.get("title", "")),
                advice={str(k): str(v) for k, v in advice.items() if v},
                tier=_optional_int(payload.get("tier")),
                campaign=_optional_str(payload.get("campaign")),
                campaign_version=_optional_int(payload.get("version")),
                context=dict(context),
                expires_at=_optional_time(payload.get("expires_at")),
                question=_optional_str(payload.get("checkin_question")),
                response_id=_optional_int(payload.get("response_id")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadWork):
                raise
            raise BadWork(f"bad SMS payload: {exc.__class__.__name__} {exc}") from None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadWork(f"not a time: {value!r}")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise BadWork(f"a time without its zone: {value!r}")
    return at


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadWork(f"not an integer: {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who receives the message, as the gate needs to know them. Staff have no quiet hours."""

    phone: str | None
    consent: bool = True
    opted_out: bool = False
    zone: tzinfo = UTC
    quiet_start: time | None = None
    quiet_end: time | None = None
    language: str = "en"
    service_name: str | None = None  # the care team's; None: the configured default


@dataclass(frozen=True, slots=True)
class SendNow:
    pass


@dataclass(frozen=True, slots=True)
class Defer:
    until: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Verdict = SendNow | Defer | Drop


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything :func:`decide` looks at."""

    work: SmsWork
    recipient: Recipient | None
    now: datetime
    alert_state: str | None = None  # None: no alert, or it no longer exists
    # Patient SMS already sent in the recipient's local day that count against this message's
    # cap: for an alert message its non-urgent alert messages; for a campaign message every
    # message (alerts first: program messages never crowd out an alert's).
    sent_today: int = 0
    daily_cap: int = 3
    open_severity: Severity | None = None  # highest severity of the patient's open episodes


def _unknown(s: Situation) -> Verdict | None:
    return Drop(f"unknown {s.work.audience}") if s.recipient is None else None


def _no_phone(s: Situation) -> Verdict | None:
    return Drop("no phone number") if s.recipient is not None and not s.recipient.phone else None


def _no_consent(s: Situation) -> Verdict | None:
    r = s.recipient
    return Drop("no SMS consent") if r is not None and not r.consent else None


def _opted_out(s: Situation) -> Verdict | None:
    r = s.recipient
    return Drop("opted out") if r is not None and r.opted_out else None


def _escalation_moot(s: Situation) -> Verdict | None:
    if s.work.audience == "staff" and s.alert_state != "open":
        return Drop(f"alert {s.alert_state or 'gone'} before the escalation was sent")
    return None


def _resolved(s: Situation) -> Verdict | None:
    if s.work.audience == "patient" and not s.work.urgent and s.alert_state == "resolved":
        return Drop("alert resolved before the message was sent")
    return None


def _expired(s: Situation) -> Verdict | None:
    """A campaign message held back (quiet hours, retries) past its occurrence is stale: "no
    reading yet today" is wrong tomorrow."""
    if s.work.expires_at is not None and s.now >= s.work.expires_at:
        return Drop("expired")
    return None


def _in_crisis(s: Situation) -> Verdict | None:
    """No program message to a patient with an open high or critical episode (but the next
    question of a check-in they are answering)."""
    if not s.work.is_campaign or s.work.response_id is not None:
        return None
    if s.open_severity is not None and s.open_severity >= Severity.HIGH:
        return Drop("open high or critical alert")
    return None


def _urgent(s: Situation) -> Verdict | None:
    return SendNow() if s.work.urgent else None


def _quiet(s: Situation) -> Verdict | None:
    r = s.recipient
    if r is None or r.quiet_start is None or r.quiet_end is None:
        return None
    until = quiet_until(s.now, r.zone, r.quiet_start, r.quiet_end)
    return Defer(until, "quiet hours") if until is not None else None


def _capped(s: Situation) -> Verdict | None:
    return Drop("daily cap") if s.sent_today >= s.daily_cap else None


# Checked in order; the first that answers decides. Consent and opt-out come before urgency:
# an urgent message to someone who said STOP is still not sent.
_CHECKS: tuple[Callable[[Situation], Verdict | None], ...] = (
    _unknown,
    _no_phone,
    _no_consent,
    _opted_out,
    _escalation_moot,
    _resolved,
    _expired,
    _in_crisis,
    _urgent,
    _quiet,
    _capped,
)


def decide(situation: Situation) -> Verdict:
    """Send now, defer to a time, or drop with a reason."""
    for check in _CHECKS:
        verdict = check(situation)
        if verdict is not None:
            return verdict
    return SendNow()


def quiet_until(now: datetime, zone: tzinfo, start: time, end: time) -> datetime | None:
    """When the quiet hours around ``now`` end (UTC), or None outside them.

    ``start`` and ``end`` are local wall-clock times; ``start > end`` spans midnight (the usual
    21:00-08:00); ``start == end`` means no quiet hours.
    """
    if start == end:
        return None
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    if start < end:
        inside, end_date = start <= t < end, local.date()
    else:
        inside = t >= start or t < end
        end_date = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    until = datetime.combine(end_date, end, tzinfo=zone).astimezone(UTC)
    return until if until > now else None  # a wall time skipped by a DST change


def local_day(now: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The [start, end) of ``now``'s calendar day in ``zone``, in UTC."""
    day = now.astimezone(zone).date()
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def zone_of(name: str | None) -> tzinfo:
    """The IANA time zone ``name``; UTC when unset or unknown."""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC
