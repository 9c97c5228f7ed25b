"""What a voice call about a critical alert says, in the patient's language. Pure.

The call says who calls (the care team's service name) and why ("your reading", never the
rule's title: a title is the nurses' word, e.g. "Hypertensive crisis", and English), what to
do (the rule's advice in the patient's language, written for patients, else generic advice),
to call the emergency number if very unwell, and asks to press 1 to confirm. Languages:
English and Spanish; anything else falls back to English. ``say_language`` is the
``language`` attribute of TwiML ``<Say>``
(https://www.twilio.com/docs/voice/twiml/say#attributes-language).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from alerts.templates import advice_in

DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "es")


@dataclass(frozen=True, slots=True)
class _Phrases:
    say_language: str
    opening: str  # {service}
    generic_advice: str
    emergency: str  # {number}
    prompt: str
    thanks: str
    not_confirmed: str  # {number}


_PHRASES: Mapping[str, _Phrases] = MappingProxyType(
    {
        "en": _Phrases(
            say_language="en-US",
            opening="This is an urgent call from {service}, your care team. "
            "Your reading is in the danger range.",
            generic_advice="Sit down, rest and measure again.",
            emergency="If you feel very unwell, hang up and call {number} now.",
            prompt="Press 1 to confirm you heard this message.",
            thanks="Thank you. Your care team has been told that you heard this message. Goodbye.",
            not_confirmed="We did not get your confirmation. Your care team will contact you. "
            "If you feel very unwell, call {number}. Goodbye.",
        ),
        "es": _Phrases(
            say_language="es-MX",
            opening="Esta es una llamada urgente de {service}, su equipo de salud. "
            "Una lectura suya está en un nivel peligroso.",
            generic_advice="Siéntese, descanse y vuelva a medir.",
            emergency="Si se siente muy mal, cuelgue y llame al {number} ahora.",
            prompt="Oprima 1 para confirmar que escuchó este mensaje.",
            thanks="Gracias. Avisamos a su equipo de salud que usted escuchó este mensaje. Adiós.",
            not_confirmed="No recibimos su confirmación. Su equipo de salud le contactará. "
            "Si se siente muy mal, llame al {number}. Adiós.",
        ),
    }
)


def language_of(tag: str | None) -> str:
    """``es-MX`` -> ``es``; unknown -> English."""
    primary = (tag or "").replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in _PHRASES else DEFAULT_LANGUAGE


@dataclass(frozen=True, slots=True)
class Script:
    """One call's words: ``message`` then ``prompt`` inside the Gather, then the answers."""

    say_language: str
    message: str
    prompt: str
    thanks: str
    not_confirmed: str


def critical_alert(
    *, advice: Mapping[str, str], language: str, service: str, emergency_number: str = "911"
) -> Script:
    """The call about a critical alert, from ``service``."""
    lang = language_of(language)
    p = _PHRASES[lang]
    advice_text = advice_in(advice, lang, emergency_number) or p.generic_advice
    if not advice_text.endswith((".", "!", "?")):
        advice_text += "."
    parts = [p.opening.format(service=service), advice_text]
    if emergency_number not in advice_text:
        parts.append(p.emergency.format(number=emergency_number))
    return Script(
        p.say_language,
        " ".join(parts),
        p.prompt,
        p.thanks,
        p.not_confirmed.format(number=emergency_number),
    )
