"""Check-ins: structured questions by SMS and the parsing of their replies. Pure.

A questionnaire is data (:data:`QUESTIONNAIRES`): questions with their text per language and
the answer options a reply may choose, each option with the reply words that choose it.
:func:`parse_reply` turns a patient's SMS into an :class:`Answer` or :class:`Unparseable`
with the reason; it never guesses a meaning from free text (a person reads that: the nurse's
inbox, docs/checkins.md).

Tolerated: case, whitespace, punctuation, accents (``sí`` is ``si``), an option's number and
word together (``1 yes``, ``1) Sí``), thumbs and check-mark emoji, and a few courtesy words
(``yes thanks``, ``no, gracias``). Anything else beside the answer (``no but I feel dizzy``),
two different answers (``1 2``), or no answer at all is unparseable.

"YES" is also one of Twilio's opt-in keywords (START, YES, UNSTOP, OPTIN). The inbound
handler treats a keyword first, except that an opt-in word which parses as an answer to an
open check-in of a patient who is not opted out is taken as the answer (opting in someone
who is subscribed would change nothing). The questions ask for digits ("Reply 1 for yes, 2
for no"), which no carrier or Twilio keyword handling touches.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DEFAULT_LANGUAGE = "en"
QUESTIONNAIRE_SYSTEM = "urn:rpm:questionnaire"  # canonical: urn:rpm:questionnaire:<id>
QUESTION_SYSTEM = "urn:rpm:checkin-question"  # our own codes for questions (see below)
LOINC = "http://loinc.org"
MAX_REPLY = 160  # one SMS segment of GSM-7: a longer text is a message, not an answer
DEFAULT_REPLY_WINDOW_HOURS = 24
MAX_REPLY_WINDOW_HOURS = 72


@dataclass(frozen=True, slots=True)
class Option:
    """One answer a question accepts: its code, how FHIR records it, and the reply words
    (normalised by :func:`words_of`) that choose it."""

    code: str  # "yes", "no": what rules read
    system: str
    system_code: str
    display: str
    words: frozenset[str]


@dataclass(frozen=True, slots=True)
class Question:
    link_id: str
    text: Mapping[str, str]  # language -> the question (the SMS adds how to reply)
    options: tuple[Option, ...]
    source: str = ""

    def text_for(self, language: str) -> tuple[str, str]:
        """(language used, text): ``language``, else its base language, else English."""
        base = language.split("-")[0].lower()
        for tag in (language, base):
            if tag in self.text:
                return tag, self.text[tag]
        return DEFAULT_LANGUAGE, self.text[DEFAULT_LANGUAGE]

    def option(self, code: str) -> Option:
        return next(o for o in self.options if o.code == code)


@dataclass(frozen=True, slots=True)
class Questionnaire:
    id: str  # our name, as campaigns write it (``hf_symptoms``)
    version: str
    title: str
    questions: tuple[Question, ...]
    source: str

    @property
    def fhir_id(self) -> str:
        """FHIR ids take no underscore (R4 datatypes.html#id)."""
        return self.id.replace("_", "-")

    @property
    def url(self) -> str:
        """The canonical URL QuestionnaireResponse.questionnaire points at."""
        return f"{QUESTIONNAIRE_SYSTEM}:{self.id}"

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}"

    def question(self, link_id: str) -> Question:
        for q in self.questions:
            if q.link_id == link_id:
                return q
        raise KeyError(link_id)

    def after(self, link_id: str) -> Question | None:
        """The question asked after ``link_id``; None when it is the last."""
        ids = [q.link_id for q in self.questions]
        i = ids.index(link_id)
        return self.questions[i + 1] if i + 1 < len(ids) else None

    def complete(self, answered: Mapping[str, str]) -> bool:
        return all(q.link_id in answered for q in self.questions)


# LOINC answer codes for yes and no (the LOINC answer list LL361-7, used by many HL7
# implementation guides): LA33-6 Yes, LA32-8 No.
YES = Option(
    "yes",
    LOINC,
    "LA33-6",
    "Yes",
    frozenset({"1", "yes", "y", "yeah", "yep", "yup", "si", "claro", "👍", "✅", "✔"}),
)
NO = Option(
    "no",
    LOINC,
    "LA32-8",
    "No",
    frozenset({"2", "no", "n", "nope", "nah", "👎", "❌", "✖"}),
)
YES_NO = (YES, NO)

# Words that may stand beside an answer without changing it. Nothing here negates or
# qualifies: "not", "but", "sometimes" make the reply free text for a person to read.
COURTESY = frozenset(
    {
        *("ok", "okay", "thanks", "thank", "you", "thx", "please", "i", "did", "do", "have"),
        *("gracias", "por", "favor", "ya", "lo", "la", "hice", "tome"),
    }
)

_REPLY_HINT: Mapping[str, str] = MappingProxyType(
    {"en": "Reply 1 for yes, 2 for no.", "es": "Responda 1 para sí, 2 para no."}
)
# What the patient is answered (TwiML), per language; {number}: the emergency number.
_THANKS: Mapping[str, str] = MappingProxyType(
    {
        "en": "Thank you, your answers went to your care team. For emergencies call {number}.",
        "es": "Gracias, sus respuestas llegaron a su equipo de salud. En una emergencia llame "
        "al {number}.",
    }
)
_NOT_READ: Mapping[str, str] = MappingProxyType(
    {
        "en": "Sorry, we could not read that as an answer. {hint} Your care team will also "
        "read your message. For emergencies call {number}.",
        "es": "Perdone, no pudimos leer su respuesta. {hint} Su equipo de salud también leerá "
        "su mensaje. En una emergencia llame al {number}.",
    }
)


def _yes_no(en: str, es: str) -> Mapping[str, str]:
    return MappingProxyType({"en": en, "es": es})


# No LOINC question code fits these questions as asked ("today", "more than usual"): LOINC's
# heart-failure instruments (KCCQ, MLHFQ) ask about the last two or four weeks on their own
# scales, so a code of theirs would claim a different question. The items carry our own
# codes (QUESTION_SYSTEM, the link ids), and the answers LOINC's yes/no codes. For the same
# reason the answers are recorded as a QuestionnaireResponse, not as Observations.
_HF_SOURCE = (
    "McDonagh TA et al. 2021 ESC Guidelines for the diagnosis and treatment of acute and "
    "chronic heart failure. Eur Heart J 2021;42:3599-3726 (Table 5: orthopnoea and ankle "
    "swelling are typical symptoms; self-care: recognise worsening symptoms and weight gain). "
    "AHA patient guidance 'Self-Check Plan for HF Management': needing more pillows or to sleep "
    "sitting up, and swelling of the feet, ankles or legs, are yellow-zone signs to report."
)
QUESTIONNAIRES: Mapping[str, Questionnaire] = MappingProxyType(
    {
        "bp_medication": Questionnaire(
            "bp_medication",
            "1",
            "Blood-pressure medicine taken today",
            (
                Question(
                    "taken_today",
                    _yes_no(
                        "Did you take your blood pressure medicine today?",
                        "¿Tomó hoy su medicina para la presión?",
                    ),
                    YES_NO,
                ),
            ),
            source=(
                "Whelton PK et al. 2017 ACC/AHA Guideline for the Prevention, Detection, "
                "Evaluation, and Management of High Blood Pressure in Adults. Hypertension "
                "2018;71:e13-e115 (section 12.2: adherence strategies; nonadherence is a "
                "common cause of uncontrolled hypertension). A self-report, not a measure."
            ),
        ),
        "hf_symptoms": Questionnaire(
            "hf_symptoms",
            "1",
            "Heart-failure symptoms today",
            (
                Question(
                    "orthopnea",
                    _yes_no(
                        "Are you more short of breath than usual when lying flat, or needing "
                        "more pillows to sleep?",
                        "¿Le falta el aire más de lo normal al acostarse, o necesita más "
                        "almohadas para dormir?",
                    ),
                    YES_NO,
                    source=_HF_SOURCE,
                ),
                Question(
                    "ankle_swelling",
                    _yes_no(
                        "Are your ankles or legs more swollen than usual?",
                        "¿Tiene los tobillos o las piernas más hinchados de lo normal?",
                    ),
                    YES_NO,
                    source=_HF_SOURCE,
                ),
            ),
            source=_HF_SOURCE,
        ),
    }
)


def prompt_text(question: Question, language: str, intro: str | None = None) -> tuple[str, str]:
    """(language, SMS text) asking ``question`` and how to reply, after ``intro`` when the
    campaign has one."""
    used, text = question.text_for(language)
    asked = f"{text} {_REPLY_HINT.get(used, _REPLY_HINT[DEFAULT_LANGUAGE])}"
    return used, f"{intro}\n{asked}" if intro else asked


def thanks(language: str, emergency_number: str) -> str:
    """The reply to the last answer of a questionnaire."""
    return _in(_THANKS, language).format(number=emergency_number)


def not_read(language: str, emergency_number: str) -> str:
    """The reply to a reply we could not read as an answer (it goes to the nurse's inbox)."""
    hint = _in(_REPLY_HINT, language)
    return _in(_NOT_READ, language).format(hint=hint, number=emergency_number)


def _in(texts: Mapping[str, str], language: str) -> str:
    base = language.split("-")[0].lower()
    return texts.get(language) or texts.get(base) or texts[DEFAULT_LANGUAGE]


# --- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    option: Option


@dataclass(frozen=True, slots=True)
class Unparseable:
    reason: str


Parsed = Answer | Unparseable

# Emoji that stand for an answer, kept as words; skin tones and variation selectors dropped.
_EMOJI_WORDS = frozenset({"👍", "✅", "✔", "👎", "❌", "✖"})
_MODIFIERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0e\ufe0f\u200d]")
_APOSTROPHES = re.compile("['\u2019\u02bc]")


def words_of(text: str) -> list[str]:
    """The reply as lower-case words without accents or punctuation; answer emoji kept."""
    text = _MODIFIERS.sub("", unicodedata.normalize("NFKC", text))
    text = _APOSTROPHES.sub("", text)
    out: list[str] = []
    word: list[str] = []
    for ch in text:
        if ch in _EMOJI_WORDS:
            out.extend(["".join(word)] if word else [])
            out.append(ch)
            word = []
        elif ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return [_plain(w) for w in out]


def _plain(word: str) -> str:
    if word in _EMOJI_WORDS:
        return word
    decomposed = unicodedata.normalize("NFD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def parse_reply(question: Question, body: str) -> Parsed:
    """The option a reply chooses, or why it cannot be read as one."""
    if len(body) > MAX_REPLY:
        return Unparseable("longer than an answer")
    words = words_of(body)
    if not words:
        return Unparseable("empty")
    chosen = {o.code: o for o in question.options for w in words if w in o.words}
    other = [
        w for w in words if w not in COURTESY and not any(w in o.words for o in chosen.values())
    ]
    if len(chosen) > 1:
        return Unparseable("more than one answer")
    if not chosen:
        return Unparseable("no answer option")
    if other:
        return Unparseable("other words beside the answer")
    return Answer(next(iter(chosen.values())))


def answered_yes(answers: Mapping[str, str], link_id: str) -> bool | None:
    """Whether question ``link_id`` was answered yes; None when not answered."""
    code = answers.get(link_id)
    return None if code is None else code == YES.code
