"""Plain-language SMS texts: patient alerts, nurse escalations, keyword replies. Pure.

A patient text names the care team's service (``service``: the team's
``care_teams.service_name``, else ``RPM_SMS_SERVICE_NAME``), says what happened, what to do and
that the nurse was told; a critical one also says to call the emergency number (unless the
rule's advice already does). Texts are in the patient's language (English and Spanish; anything
else falls back to English), with times in the patient's time zone.

Words: a patient text is read on a lock screen, so it carries no clinical jargon (no rule
titles such as "Hypertensive crisis" or "Early warning score (NEWS2)", no "SpO2"): it says
"your reading", and the rule's advice, written for patients in each language, says which
reading and what to do. ``JARGON`` lists the words tests keep out of every patient text.

Length: two SMS segments where possible, i.e. 306 GSM-7 characters or 134 UCS-2 units
(3GPP TS 23.040). One accented letter outside the GSM-7 alphabet (á, í, ó, ú) turns a whole
text into UCS-2, so when that would cost segments the text falls back to GSM-7 lookalikes, as
Twilio's Smart Encoding does. The rule's advice is never cut.

Nurse escalations carry ids, severity and the rule's title, never a patient's name or phone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from math import ceil
from types import MappingProxyType

from rpm.domain import Severity

MAX_SEGMENTS = 2
DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "es")

# Clinical words a patient should not meet in a text (tests scan every patient text and every
# built-in rule's advice, in every language, for them; matched case-insensitively).
JARGON = (
    "news2",
    "early warning",
    "hypertensive",
    "hipertensiv",
    "crisis",
    "hypox",
    "hipox",
    "hypoglyc",
    "hipoglucem",
    "hyperglyc",
    "hiperglucem",
    "hypotension",
    "hipotensi",
    "spo2",
    "saturation",
    "saturaci",
    "systolic",
    "sistólica",
    "diastolic",
    "diastólica",
    "mmhg",
    "mm hg",
    "tachycard",
    "taquicard",
    "bradycard",
    "bradicard",
    "diuresis",
    "stage 2",
    "baseline",
    "exacerbation",
    "exacerbaci",
    "copd",
    "epoc",
    "percentage point",
    "threshold",
)

# GSM 03.38 default alphabet and its extension table (escape + char = 2 septets).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

# Lookalikes for characters outside GSM-7, after Twilio's Smart Encoding table.
_GSM_LOOKALIKES = str.maketrans(
    {
        "á": "a",
        "í": "i",
        "ó": "o",
        "ú": "u",
        "Á": "A",
        "Í": "I",
        "Ó": "O",
        "Ú": "U",
        "â": "a",
        "ê": "e",
        "ô": "o",
        "ç": "c",
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2026": "...",
        "\u00a0": " ",
    }
)


def count_segments(text: str) -> int:
    """How many SMS segments carriers bill for ``text`` (at least 1)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in text):
        units = sum(2 if c in _GSM_EXTENSION else 1 for c in text)
        single, multi = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else ceil(units / multi)


def fit(text: str) -> str:
    """``text``, or its GSM-7 lookalike form when that needs fewer segments past the limit."""
    if count_segments(text) <= MAX_SEGMENTS:
        return text
    plain = text.translate(_GSM_LOOKALIKES)
    return plain if count_segments(plain) < count_segments(text) else text


def language_of(tag: str | None) -> str:
    """The template language for a BCP 47 tag: ``es-MX`` -> ``es``; unknown -> English."""
    primary = (tag or "").replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in _TEXTS else DEFAULT_LANGUAGE


@dataclass(frozen=True, slots=True)
class _Language:
    """One language's phrases. ``{when}``, ``{service}`` and ``{number}`` are filled in."""

    opening: Mapping[Severity, str]
    told: Mapping[Severity, str]
    # Used when the rule has no advice in this language (never another language's advice).
    generic_advice: Mapping[Severity, str]
    emergency: str
    # Phrases meaning the advice already says the care team knows; then ``told`` is left out.
    already_told: tuple[str, ...]
    weekdays: tuple[str, ...]
    twelve_hour: bool
    help: str
    contact: str
    opted_out: str
    opted_in: str
    consent: str  # the confirmation of a consent given at enrolment
    reply_received: str
    unknown_sender: str
    # Confirm before paging: rest, then measure again within ``{minutes}`` (alerts.confirm).
    remeasure: str


def _by_severity(critical: str, high: str, other: str) -> Mapping[Severity, str]:
    return MappingProxyType(
        {
            Severity.CRITICAL: critical,
            Severity.HIGH: high,
            Severity.MEDIUM: other,
            Severity.LOW: other,
        }
    )


_TEXTS: Mapping[str, _Language] = MappingProxyType(
    {
        "en": _Language(
            opening=_by_severity(
                "URGENT, {service} ({when}): your reading is in the danger range.",
                "Health alert, {service} ({when}): your reading needs attention today.",
                "Health update, {service} ({when}).",
            ),
            told=_by_severity(
                "Your nurse has been told.",
                "Your nurse has been told and will contact you.",
                "Your nurse has been told and will review it.",
            ),
            generic_advice=_by_severity(
                "Sit down, rest and measure again.", "Rest and measure again.", ""
            ),
            emergency="If you feel very unwell, call {number} now.",
            already_told=("been told", "been notified", "will contact you"),
            weekdays=("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
            twelve_hour=True,
            help=(
                "Health alerts from {service}, your care team's home monitoring. Reply STOP to "
                "stop these texts, START to restart. Msg & data rates may apply. For "
                "emergencies call {number}."
            ),
            contact="Questions: {contact}",
            opted_out=(
                "You are unsubscribed from {service} health alerts and will get no more texts. "
                "Reply START to resubscribe. For emergencies call {number}."
            ),
            opted_in=(
                "You will get {service} health alerts by text again. Reply HELP for help, "
                "STOP to stop. Msg & data rates may apply."
            ),
            consent=(
                "{service}: you are signed up for texts from your care team about your home "
                "readings: alerts, reminders and questions. Msg frequency varies. Reply HELP "
                "for help, STOP to stop. Msg & data rates may apply."
            ),
            reply_received=(
                "{service}: thank you, your care team will read your message. This number is "
                "not watched all the time: for emergencies call {number}."
            ),
            unknown_sender=(
                "{service}: sorry, we could not match this phone number to a patient. Please "
                "call your care team. For emergencies call {number}."
            ),
            remeasure=(
                "{service} ({when}): please sit and rest for 5 minutes, then measure again "
                "within {minutes} minutes so we can check your last reading. If you feel very "
                "unwell, call {number} now."
            ),
        ),
        "es": _Language(
            opening=_by_severity(
                "URGENTE, {service} ({when}): su lectura está en un nivel peligroso.",
                "Alerta, {service} ({when}): su lectura necesita atención hoy.",
                "Aviso de salud, {service} ({when}).",
            ),
            told=_by_severity(
                "Ya avisamos a su equipo de enfermería.",
                "Ya avisamos a su equipo de enfermería; le contactarán.",
                "Ya avisamos a su equipo de enfermería; lo revisarán.",
            ),
            generic_advice=_by_severity(
                "Siéntese, descanse y vuelva a medir.",
                "Descanse y vuelva a medir hoy.",
                "Siga su plan de cuidado.",
            ),
            emergency="Si se siente muy mal, llame al {number} ahora.",
            already_told=("ya avisamos", "ya fue avisad", "ha sido informad", "le contactar"),
            weekdays=("lun", "mar", "mié", "jue", "vie", "sáb", "dom"),
            twelve_hour=False,
            help=(
                "Alertas de salud de {service}, el monitoreo en casa de su equipo de salud. "
                "Responda STOP para dejar de recibirlas y START para volver a recibirlas. En "
                "una emergencia llame al {number}."
            ),
            contact="Preguntas: {contact}",
            opted_out=(
                "Ya no recibirá alertas de salud de {service} por mensaje de texto. Responda "
                "START para volver a recibirlas. En una emergencia llame al {number}."
            ),
            opted_in=(
                "Volverá a recibir alertas de salud de {service} por mensaje de texto. Responda "
                "HELP para ayuda o STOP para dejar de recibirlas."
            ),
            consent=(
                "{service}: está inscrito para recibir mensajes de su equipo de salud sobre sus "
                "lecturas en casa: alertas, recordatorios y preguntas. La frecuencia varía. "
                "Responda HELP para ayuda o STOP para dejar de recibirlos. Pueden aplicarse "
                "tarifas de mensajes y datos."
            ),
            reply_received=(
                "{service}: gracias, su equipo de salud leerá su mensaje. Este número no se "
                "revisa todo el tiempo: en una emergencia llame al {number}."
            ),
            unknown_sender=(
                "{service}: no encontramos a un paciente con este número. Llame a su equipo de "
                "salud. En una emergencia llame al {number}."
            ),
            remeasure=(
                "{service} ({when}): por favor siéntese y descanse 5 minutos y luego vuelva a "
                "medir en los próximos {minutes} minutos para comprobar su última lectura. Si "
                "se siente muy mal, llame al {number} ahora."
            ),
        ),
    }
)


def local_time(at: datetime, now: datetime, zone: tzinfo, language: str) -> str:
    """``at`` as the patient reads it: ``10:42 PM``, with the weekday when not today."""
    texts = _TEXTS[language_of(language)]
    local = at.astimezone(zone)
    if texts.twelve_hour:
        hour = local.hour % 12 or 12
        clock = f"{hour}:{local.minute:02d} {'AM' if local.hour < 12 else 'PM'}"
    else:
        clock = f"{local.hour}:{local.minute:02d}"
    if local.date() != now.astimezone(zone).date():
        return f"{texts.weekdays[local.weekday()]} {clock}"
    return clock


EMERGENCY_NUMBER = "{emergency_number}"  # where a rule's advice names the number to call


def advice_in(advice: Mapping[str, str], language: str, emergency_number: str) -> str:
    """The rule's advice in ``language`` (a language tag we speak), one line, with the
    emergency number of this deployment (``RPM_SMS_EMERGENCY_NUMBER``) where it says
    ``{emergency_number}``; empty when the rule has none in that language."""
    text = " ".join((advice.get(language) or "").split())
    return text.replace(EMERGENCY_NUMBER, emergency_number)


def patient_alert(
    *,
    severity: Severity,
    advice: Mapping[str, str],
    language: str,
    at: datetime,
    now: datetime,
    zone: tzinfo,
    service: str,
    emergency_number: str = "911",
) -> str:
    """What happened (at ``at``, local time), what to do, and that the nurse was told, from
    ``service``. The rule's title is the nurses' word and is not shown."""
    lang = language_of(language)
    texts = _TEXTS[lang]
    advice_text = advice_in(advice, lang, emergency_number) or texts.generic_advice[severity]
    when = local_time(at, now, zone, lang)
    parts = [texts.opening[severity].format(when=when, service=service)]
    if advice_text:
        parts.append(advice_text if advice_text.endswith((".", "!", "?")) else advice_text + ".")
    if severity >= Severity.CRITICAL and emergency_number not in advice_text:
        parts.append(texts.emergency.format(number=emergency_number))
    lowered = advice_text.lower()
    if not any(phrase in lowered for phrase in texts.already_told):
        parts.append(texts.told[severity])
    return fit(" ".join(parts))


def escalation(
    *,
    alert_id: int,
    severity: Severity,
    title: str,
    patient_id: str,
    tier: int,
    minutes_unacknowledged: int,
    link: str,
) -> str:
    """A nurse escalation: ids, severity, the rule's title, how long unacknowledged, a link."""
    short_title = title if len(title) <= 60 else title[:57].rstrip() + "..."
    return fit(
        f"RPM escalation, tier {tier}: alert {alert_id} ({severity.name}) {short_title}, "
        f"patient {patient_id}, unacknowledged for {minutes_unacknowledged} min. {link}"
    )


def help_reply(
    language: str, *, service: str, emergency_number: str = "911", contact: str = ""
) -> str:
    """The answer to HELP: who texts, how to stop, where to call."""
    texts = _TEXTS[language_of(language)]
    text = texts.help.format(number=emergency_number, service=service)
    if contact:
        text = f"{text} {texts.contact.format(contact=contact)}"
    return fit(text)


def opted_out_reply(language: str, *, service: str, emergency_number: str = "911") -> str:
    texts = _TEXTS[language_of(language)]
    return fit(texts.opted_out.format(number=emergency_number, service=service))


def opted_in_reply(language: str, *, service: str, emergency_number: str = "911") -> str:
    texts = _TEXTS[language_of(language)]
    return fit(texts.opted_in.format(number=emergency_number, service=service))


def consent_confirmation(language: str, *, service: str) -> str:
    """The one text that confirms a consent given at enrolment: who texts, about what, how
    often, HELP and STOP, and that rates may apply (CTIA Messaging Principles and Best
    Practices, 2023, opt-in confirmation)."""
    return fit(_TEXTS[language_of(language)].consent.format(service=service))


def reply_received(language: str, *, service: str, emergency_number: str = "911") -> str:
    """The answer to a free-text reply: the care team will read it; not for emergencies."""
    texts = _TEXTS[language_of(language)]
    return fit(texts.reply_received.format(number=emergency_number, service=service))


def unknown_sender_reply(*, service: str, emergency_number: str = "911") -> str:
    texts = _TEXTS[DEFAULT_LANGUAGE]
    return fit(texts.unknown_sender.format(number=emergency_number, service=service))


def remeasure_request(
    language: str,
    *,
    minutes: int,
    at: datetime,
    now: datetime,
    zone: tzinfo,
    service: str,
    emergency_number: str = "911",
) -> str:
    """Confirm before paging: rest, then measure again within ``minutes`` (the reading of
    ``at``, local time, is checked again). No rule title, no values: a lock screen shows it."""
    lang = language_of(language)
    when = local_time(at, now, zone, lang)
    return fit(
        _TEXTS[lang].remeasure.format(
            service=service, when=when, minutes=minutes, number=emergency_number
        )
    )
