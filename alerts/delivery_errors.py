"""Why Twilio did not deliver a message, by class: the label ``/metrics`` counts failed and
undelivered messages under, and the words the alert's audit trail uses. Pure.

Codes are Twilio's (https://www.twilio.com/docs/api/errors/<code>). The classes group them by
what the clinic does about it: ``unregistered`` needs the A2P 10DLC / toll-free registration
(and ``RPM_TWILIO_MESSAGING_SERVICE_SID``), ``filtered`` the content or the sender's
reputation looked at, ``unreachable`` a right number for the patient, ``expired`` the queue
looked at (the validity period ran out in Twilio's queue), ``account`` the Twilio account.
"""

from __future__ import annotations

from types import MappingProxyType

# code -> (class, what it means)
_CODES: MappingProxyType[int, tuple[str, str]] = MappingProxyType(
    {
        30001: ("provider", "queue overflow"),
        30002: ("account", "account suspended"),
        30003: ("unreachable", "unreachable handset"),
        30004: ("filtered", "message blocked"),
        30005: ("unreachable", "unknown or inactive number"),
        30006: ("unreachable", "landline or unreachable carrier"),
        30007: ("filtered", "filtered by the carrier"),
        30008: ("provider", "unknown error"),
        30010: ("account", "price exceeds the account's maximum"),
        30032: ("unregistered", "toll-free number not verified"),
        30034: ("unregistered", "US number not registered for A2P 10DLC"),
        30036: ("expired", "validity period expired in Twilio's queue"),
        21610: ("opted_out", "recipient texted STOP"),
        63003: ("whatsapp", "not on WhatsApp"),
        63016: ("whatsapp", "outside the WhatsApp 24-hour window"),
    }
)
CLASSES = (
    *("unregistered", "filtered", "unreachable", "expired", "opted_out", "account"),
    *("whatsapp", "provider", "other", "none"),
)


def error_class(code: int | None) -> str:
    """The class of Twilio error ``code`` (``none`` without one, ``other`` when not known)."""
    if code is None:
        return "none"
    if code in _CODES:
        return _CODES[code][0]
    return "whatsapp" if 63000 <= code < 64000 else "other"


def describe(channel: str, status: str, code: int | None) -> str:
    """One line for the alert's audit trail: ``sms undelivered: Twilio 30034 (...)``."""
    if code is None:
        return f"{channel} {status} (no error code)"
    meaning = _CODES.get(code, (None, "see Twilio's error reference"))[1]
    return f"{channel} {status}: Twilio {code} ({meaning})"
