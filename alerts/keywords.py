"""What an inbound SMS asks for: to stop messages, to start them again, or help. Pure.

Revoking consent by a reply is the patient's right, and the FCC's 2024 rule says how to read
one (FCC 24-24, Report and Order of 14 February 2024, 47 CFR 64.1200(a)(10)): words "such as
stop, quit, end, revoke, opt out, cancel, or unsubscribe" sent in reply revoke consent, and a
sender may not require one exact form. So a reply revokes when, after its case, accents,
punctuation and politeness are set aside, it is one of those words (or a Spanish one) alone,
or with words that only say what to stop: "Stop.", "Opt out", "stop texting me", "Please
unsubscribe me!", "No más mensajes". A keyword inside other words ("I can't stop coughing")
revokes nothing, since the intent is not clear; :func:`mentions_opt_out` flags it, so the
nurse who reads it can ask.

Twilio's own keyword handling on long codes (STOP, START, HELP and their synonyms, exact
single words) blocks its side too; its Advanced Opt-Out names the class it matched
(``OptOutType``), which wins: a clinic may have configured keywords of its own there.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType


class Keyword(enum.StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


# The single words, as Twilio and the carriers know them (the tests walk this table): Twilio's
# standard keywords for long codes, REVOKE and OPTOUT from FCC 24-24, OPTIN as their
# counterpart, and Spanish ones (ALTO, PARAR, CANCELAR, BAJA; AYUDA) for our Spanish texts.
KEYWORDS: Mapping[str, Keyword] = MappingProxyType(
    {
        **dict.fromkeys(
            ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"),
            Keyword.OPT_OUT,
        ),
        **dict.fromkeys(("ALTO", "PARAR", "PARE", "CANCELAR", "BAJA"), Keyword.OPT_OUT),
        **dict.fromkeys(("START", "YES", "UNSTOP", "OPTIN"), Keyword.OPT_IN),
        **dict.fromkeys(("HELP", "INFO", "AYUDA"), Keyword.HELP),
    }
)

# Words that only ask politely or say hello: set aside before matching.
_POLITE = frozenset(
    [
        "please",
        "pls",
        "plz",
        "now",
        "thanks",
        "thank",
        "you",
        "thx",
        "ok",
        "okay",
        "hi",
        "hello",
        "por",
        "favor",
        "gracias",
        "ya",
        "hola",
    ]
)
# Phrases of more than one word that mean what a keyword means.
_PHRASES: Mapping[str, Keyword] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                "opt out",
                "opt me out",
                "stop all",
                "no more",
                "dont text me",
                "do not text me",
                "dont message me",
                "do not message me",
                "remove me",
                "take me off",
                "darme de baja",
                "dar de baja",
                "no mas",
                "no me envien mas",
                "no me manden mas",
                "dejen de enviarme",
                "deje de enviarme",
                "dejen de mandarme",
            ),
            Keyword.OPT_OUT,
        ),
        **dict.fromkeys(("opt in", "opt me in", "opt back in"), Keyword.OPT_IN),
    }
)
# Words that only say what to stop ("texting me", "these messages", "from this list"),
# allowed after an opt-out keyword or phrase, never before it.
_WHAT = frozenset(
    [
        "me",
        "anymore",
        "again",
        "ever",
        "texting",
        "text",
        "texts",
        "txt",
        "txts",
        "message",
        "messages",
        "messaging",
        "sending",
        "send",
        "sms",
        "all",
        "these",
        "this",
        "the",
        "any",
        "more",
        "from",
        "of",
        "list",
        "your",
        "mensajes",
        "mensaje",
        "sms",
        "los",
        "estos",
        "de",
        "enviar",
        "enviarme",
        "mandar",
        "mandarme",
        "textos",
        "lista",
    ]
)
# Words that make a reply worth a person's reading when they are not the whole of it.
_REVOKING_WORDS = frozenset({"stop", "stopall", "unsubscribe", "revoke", "optout", "alto", "parar"})
_OPT_OUT_PHRASES = tuple(p for p, k in _PHRASES.items() if k is Keyword.OPT_OUT and " " in p)
_NOT_A_LETTER = re.compile(r"[^a-z0-9]+")


def _words(body: str) -> list[str]:
    """Lower-case words without accents or punctuation ("don't" is "dont")."""
    decomposed = unicodedata.normalize("NFKD", body.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).replace("'", "")
    plain = plain.replace("\u2019", "")
    return [w for w in _NOT_A_LETTER.split(plain) if w]


def _match(words: list[str]) -> Keyword | None:
    """The keyword the words are, alone or an opt-out followed only by what to stop."""
    if not words:
        return None
    whole = " ".join(words)
    if len(words) == 1 and whole.upper() in KEYWORDS:
        return KEYWORDS[whole.upper()]
    if whole in _PHRASES:
        return _PHRASES[whole]
    # The longest opt-out keyword or phrase the reply starts with, then only _WHAT words.
    for n in range(len(words) - 1, 0, -1):
        head, tail = " ".join(words[:n]), words[n:]
        kind = _PHRASES.get(head) or (KEYWORDS.get(head.upper()) if n == 1 else None)
        if kind is Keyword.OPT_OUT and all(w in _WHAT for w in tail):
            return kind
    return None


def keyword_of(body: str, opt_out_type: str | None = None) -> Keyword | None:
    """The keyword an inbound SMS is, or None for anything else (which a person reads)."""
    if opt_out_type and opt_out_type.upper() in _OPT_OUT_TYPES:
        return _OPT_OUT_TYPES[opt_out_type.upper()]
    return _match([w for w in _words(body) if w not in _POLITE])


def mentions_opt_out(body: str) -> bool:
    """Whether a reply that is not a keyword still uses a word that revokes consent, so the
    person who reads it can ask whether the patient wants no more messages."""
    words = _words(body)
    text = f" {' '.join(words)} "
    return any(w in _REVOKING_WORDS for w in words) or any(
        f" {p} " in text for p in _OPT_OUT_PHRASES
    )


# Twilio's Advanced Opt-Out names the keyword class it matched (custom or localised keywords).
_OPT_OUT_TYPES: Mapping[str, Keyword] = MappingProxyType(
    {"STOP": Keyword.OPT_OUT, "START": Keyword.OPT_IN, "HELP": Keyword.HELP}
)
