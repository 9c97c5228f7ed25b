"""Which channel a patient message goes out on, and what happens when it fails. Pure.

A patient has a preferred channel and a fallback order (``patients.preferred_channel``,
``patients.channel_fallback``): the *route* is the preferred channel, then the fallback
channels, each once. A message goes out on the first channel of the route that can carry it
(:func:`choose`):

- ``sms`` carries everything;
- ``whatsapp`` carries everything when a WhatsApp sender is configured; outside WhatsApp's
  24-hour customer-service window only as an approved template (:func:`whatsapp_content`),
  so a kind of message without a template skips it;
- ``voice`` carries only critical alerts (a call that says the alert and asks to press 1).

When a message fails for good (Twilio refuses it, or reports ``undelivered``/``failed``),
:func:`after_failure` names the next channel of the route that can carry it, never one
tried before; the worker queues it as a new outbox item whose key names the failed one, so
it is queued once.

Voice calls (:class:`VoiceWork`) are gated by :func:`voice_gate`: consent and opt-out hold
as for SMS; quiet hours do not stop a call, which only ever carries a critical alert.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, get_args

from rpm.domain import Severity
from rpm.domain.errors import BadWork

Channel = Literal["sms", "whatsapp", "voice"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
MESSAGE_CHANNELS: frozenset[str] = frozenset({"sms", "whatsapp"})  # Twilio Messages
WHATSAPP_PREFIX = "whatsapp:"

# Meta's customer-service window: free-form messages only within 24 hours of the user's last
# message; outside it, business-initiated messages must be approved templates
# (https://www.twilio.com/docs/whatsapp/key-concepts#the-customer-service-window,
# https://developers.facebook.com/docs/whatsapp/pricing#customer-service-windows).
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)

# Message statuses after which the next channel is tried (Twilio's message status values,
# https://www.twilio.com/docs/messaging/api/message-resource#message-status-values).
FAILED_STATUSES: frozenset[str] = frozenset({"undelivered", "failed"})

# Twilio error codes a WhatsApp send fails with that another channel can do better on. Any
# permanent failure falls back; these are named in logs and docs/channels.md.
WHATSAPP_ERRORS: Mapping[int, str] = MappingProxyType(
    {
        63003: "not a WhatsApp user",  # https://www.twilio.com/docs/api/errors/63003
        63016: "outside the 24-hour window",  # https://www.twilio.com/docs/api/errors/63016
        63007: "no WhatsApp sender for From",  # https://www.twilio.com/docs/api/errors/63007
    }
)


def address(channel: Channel, phone: str) -> str:
    """The ``To``/``From`` Twilio uses for ``phone`` on ``channel`` (``whatsapp:+E164``)."""
    return f"{WHATSAPP_PREFIX}{phone}" if channel == "whatsapp" else phone


def split_address(value: str) -> tuple[Channel, str]:
    """The channel and the E.164 number of an address Twilio posted (``From``)."""
    if value.lower().startswith(WHATSAPP_PREFIX):
        return "whatsapp", value[len(WHATSAPP_PREFIX) :]
    return "sms", value


@dataclass(frozen=True, slots=True)
class Route:
    """A patient's preferred channel and fallback order."""

    preferred: Channel = "sms"
    fallback: tuple[Channel, ...] = ("sms", "voice")

    @property
    def order(self) -> tuple[Channel, ...]:
        """The channels to try, in order, each once."""
        return tuple(dict.fromkeys((self.preferred, *self.fallback)))

    @classmethod
    def of(cls, preferred: str, fallback: Sequence[str]) -> Route:
        """From the database's text values; unknown names are left out."""
        known: dict[str, Channel] = {c: c for c in CHANNELS}
        first = known.get(preferred, "sms")
        return cls(first, tuple(known[c] for c in fallback if c in known))


@dataclass(frozen=True, slots=True)
class Carriage:
    """What the channels can carry for one message."""

    critical_alert: bool  # an alert message of critical severity
    whatsapp_sender: bool  # a WhatsApp sender is configured
    whatsapp_content: bool = True  # free-form allowed, or a template exists for this message


def can_carry(channel: Channel, c: Carriage) -> bool:
    if channel == "voice":
        return c.critical_alert
    if channel == "whatsapp":
        return c.whatsapp_sender and c.whatsapp_content
    return True


def choose(route: Route, carriage: Carriage, tried: Sequence[str] = ()) -> Channel | None:
    """The first channel of the route not tried yet that can carry the message."""
    for channel in route.order:
        if channel not in tried and can_carry(channel, carriage):
            return channel
    return None


def after_failure(
    route: Route, carriage: Carriage, failed: Channel, tried: Sequence[str] = ()
) -> Channel | None:
    """The channel to try after ``failed`` failed, or None when the route is exhausted.

    Channels before ``failed`` in the route were skipped or tried already: only later ones
    (and never one in ``tried``) are candidates, so a chain of fallbacks always ends.
    """
    order = route.order
    later = order[order.index(failed) + 1 :] if failed in order else order
    for channel in later:
        if channel != failed and channel not in tried and can_carry(channel, carriage):
            return channel
    return None


# --- WhatsApp content ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FreeForm:
    """Inside the customer-service window: the rendered text as ``Body``."""


@dataclass(frozen=True, slots=True)
class Template:
    """Outside the window: an approved template, the rendered text as its variable ``1``."""

    content_sid: str


WhatsAppContent = FreeForm | Template


def in_window(now: datetime, last_inbound: datetime | None) -> bool:
    """Whether the patient wrote to us on WhatsApp within the last 24 hours."""
    return last_inbound is not None and now - last_inbound < CUSTOMER_SERVICE_WINDOW


def template_sid(templates: Mapping[str, str], kind: str, language: str) -> str | None:
    """The ContentSid for a kind of message in a language: ``kind:language`` (``alert:es``),
    then ``kind:base`` (``es`` of ``es-MX``), then ``kind``."""
    base = language.split("-", 1)[0]
    for key in (f"{kind}:{language}", f"{kind}:{base}", kind):
        if key in templates:
            return templates[key]
    return None


def whatsapp_content(
    now: datetime,
    last_inbound: datetime | None,
    templates: Mapping[str, str],
    kind: str,
    language: str,
) -> WhatsAppContent | None:
    """How a WhatsApp message goes out now; None when it cannot (outside the window with no
    approved template for this kind)."""
    if in_window(now, last_inbound):
        return FreeForm()
    sid = template_sid(templates, kind, language)
    return Template(sid) if sid else None


# --- voice calls ------------------------------------------------------------------------


VoiceReason = Literal["undelivered", "unacknowledged", "preferred"]
_VOICE_REASONS: frozenset[str] = frozenset(get_args(VoiceReason))
CONFIRM_DIGIT = "1"


@dataclass(frozen=True, slots=True)
class VoiceWork:
    """A voice outbox payload: call the patient about a critical alert, checked once."""

    patient_id: str
    alert_id: int
    round: int
    reason: VoiceReason
    title: str = ""
    advice: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "recipient": "patient",
            "patient_id": self.patient_id,
            "alert_id": self.alert_id,
            "round": self.round,
            "reason": self.reason,
            "severity": Severity.CRITICAL.name,
            "title": self.title,
            "advice": dict(self.advice),
        }

    @property
    def dedupe_key(self) -> str:
        """One call per alert per escalation round, whatever asked for it."""
        return f"voice:alert:{self.alert_id}:round:{self.round}"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> VoiceWork:
        try:
            reason = str(payload["reason"])
            if reason not in _VOICE_REASONS:
                raise BadWork(f"unknown voice reason {reason!r}")
            advice = payload.get("advice") or {}
            if not isinstance(advice, Mapping):
                raise BadWork("advice must be an object of language: text")
            alert_id = payload["alert_id"]
            if isinstance(alert_id, bool) or not isinstance(alert_id, int):
                raise BadWork(f"not an alert id: {alert_id!r}")
            return cls(
                str(payload["patient_id"]),
                alert_id,
                int(payload.get("round", 0)),
                reason,  # type: ignore[arg-type]  # checked against _VOICE_REASONS above
                str(payload.get("title", "")),
                {str(k): str(v) for k, v in advice.items() if v},
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadWork):
                raise
            raise BadWork(f"bad voice payload: {exc.__class__.__name__} {exc}") from None


@dataclass(frozen=True, slots=True)
class Callee:
    """The patient as the voice gate needs to know them."""

    phone: str | None
    consent: bool = True
    opted_out: bool = False
    route: Route = Route()


@dataclass(frozen=True, slots=True)
class CallSituation:
    work: VoiceWork
    callee: Callee | None
    alert_state: str | None  # None: the alert is gone
    confirmed: bool = False  # the patient already pressed 1 for this alert


def _call_unknown(s: CallSituation) -> str | None:
    return "unknown patient" if s.callee is None else None


def _call_no_phone(s: CallSituation) -> str | None:
    return "no phone number" if s.callee is not None and not s.callee.phone else None


def _call_no_consent(s: CallSituation) -> str | None:
    return "no consent" if s.callee is not None and not s.callee.consent else None


def _call_opted_out(s: CallSituation) -> str | None:
    return "opted out" if s.callee is not None and s.callee.opted_out else None


def _call_not_in_route(s: CallSituation) -> str | None:
    if s.callee is not None and "voice" not in s.callee.route.order:
        return "voice is not among the patient's channels"
    return None


def _call_moot(s: CallSituation) -> str | None:
    if s.alert_state in (None, "resolved"):
        return f"alert {s.alert_state or 'gone'} before the call"
    if s.work.reason == "unacknowledged" and s.alert_state != "open":
        return f"alert {s.alert_state} before the call"
    return "already confirmed by the patient" if s.confirmed else None


# Checked in order; the first that answers drops the call. Consent and opt-out (STOP revokes
# consent to calls as well as texts: FCC 24-24, revocation "by any reasonable means") come
# before anything else. No quiet hours: only critical alerts are called.
_CALL_CHECKS: tuple[Callable[[CallSituation], str | None], ...] = (
    _call_unknown,
    _call_no_phone,
    _call_no_consent,
    _call_opted_out,
    _call_not_in_route,
    _call_moot,
)


def voice_gate(situation: CallSituation) -> str | None:
    """Why this call is not placed, or None: place it now."""
    for check in _CALL_CHECKS:
        reason = check(situation)
        if reason is not None:
            return reason
    return None


# Twilio's call statuses in the order they can happen; terminal ones share a rank
# (https://www.twilio.com/docs/voice/api/call-resource#call-status-values).
CALL_STATUS_RANK: Mapping[str, int] = MappingProxyType(
    {
        "queued": 1,
        "initiated": 2,
        "ringing": 3,
        "in-progress": 4,
        "answered": 4,
        "completed": 5,
        "busy": 5,
        "no-answer": 5,
        "failed": 5,
        "canceled": 5,
    }
)


def confirmed(digits: str) -> bool:
    """Whether the keys pressed at the prompt confirm the alert."""
    return digits.strip() == CONFIRM_DIGIT
