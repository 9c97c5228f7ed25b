"""Reading an inbound SMS as the FCC's 2024 revocation rule reads it (alerts/keywords.py).

FCC 24-24 (47 CFR 64.1200(a)(10)): "stop, quit, end, revoke, opt out, cancel, or unsubscribe"
in a reply revoke consent, in any form that makes the intent clear; a keyword inside other
words does not, and is flagged for a person to ask."""

from __future__ import annotations

import pytest

from alerts.keywords import KEYWORDS, Keyword, keyword_of, mentions_opt_out

pytestmark = pytest.mark.pure

OPT_OUT, OPT_IN, HELP = Keyword.OPT_OUT, Keyword.OPT_IN, Keyword.HELP


@pytest.mark.parametrize(("word", "keyword"), sorted(KEYWORDS.items()))
def test_every_keyword_alone_in_any_case_and_punctuation(word: str, keyword: Keyword) -> None:
    for body in (word, word.lower(), word.title(), f"  {word.lower()} \n", f"{word}.", f"{word}!!"):
        assert keyword_of(body) is keyword, body


@pytest.mark.parametrize(
    "body",
    [
        # The cases.
        "Opt out",
        "Stop.",
        "Stop texting me",
        "stop texting me",
        # Politeness and what to stop, around a keyword.
        "STOP PLEASE",
        "Please stop!",
        "please unsubscribe me",
        "Unsubscribe me from this list",
        "Stop sending me messages",
        "stop all texts",
        "Opt-out",
        "opt me out",
        "OPT OUT!!!",
        "Stop these messages, thank you",
        "No more texts",
        "Don't text me",
        "do not text me anymore",
        "Remove me",
        "Cancel all messages",
        "end",
        "Quit texting me",
        # Spanish.
        "Alto",
        "ALTO por favor",
        "Parar",
        "Baja",
        "No más mensajes",
        "no mas",
        "Darme de baja",
        "Cancelar los mensajes",
        "No me envíen más mensajes",
        "Dejen de enviarme mensajes",
        "Hola, baja por favor",
    ],
)
def test_replies_whose_intent_is_clear_opt_out(body: str) -> None:
    assert keyword_of(body) is OPT_OUT


@pytest.mark.parametrize(
    "body",
    [
        "I can't stop coughing",
        "Stop texting me, I'm fine",
        "my pain won't stop",
        "Please cancel my appointment",
        "I want to end the program, can someone call me",
        "yes stop",
        "Stop the medication?",
    ],
)
def test_a_keyword_inside_other_words_is_read_by_a_person(body: str) -> None:
    assert keyword_of(body) is None


@pytest.mark.parametrize(
    ("body", "flagged"),
    [
        ("Stop texting me, I'm fine", True),
        ("I can't stop coughing", True),
        ("please unsubscribe me, my daughter has the phone now", True),
        ("Ya no quiero, alto", True),
        ("no more messages after today thanks", True),
        ("Please cancel my appointment", False),
        ("I feel dizzy", False),
        ("130/80 this morning", False),
    ],
)
def test_a_revoking_word_in_free_text_is_flagged(body: str, flagged: bool) -> None:
    assert keyword_of(body) is None
    assert mentions_opt_out(body) is flagged


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("Opt in", OPT_IN),
        ("opt back in", OPT_IN),
        ("Start please", OPT_IN),
        ("yes", OPT_IN),
        ("Yes I feel dizzy", None),  # an answer, not consent
        ("help", HELP),
        ("Ayuda", HELP),
        ("I need help", None),  # a person reads it: it may be a patient in distress
        ("", None),
        ("...", None),
        ("thank you", None),
    ],
)
def test_opt_in_and_help(body: str, keyword: Keyword | None) -> None:
    assert keyword_of(body) is keyword


def test_twilio_advanced_opt_out_type_wins() -> None:
    assert keyword_of("BAJA", "STOP") is OPT_OUT
    assert keyword_of("ALTA", "START") is OPT_IN
    assert keyword_of("AYUDA", "HELP") is HELP
    assert keyword_of("whatever the clinic configured", "stop") is OPT_OUT
