"""Check-in questionnaires, reply parsing (rpm/engagement/checkins.py) and what answers and
weights propose (alerts/symptoms.py). Pure: no database, no server, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import symptoms
from rpm.domain import Severity
from rpm.domain.errors import InvalidCampaign
from rpm.engagement import campaigns, checkins
from rpm.engagement.checkins import Answer, Unparseable, parse_reply

pytestmark = pytest.mark.pure

BP = checkins.QUESTIONNAIRES["bp_medication"]
HF = checkins.QUESTIONNAIRES["hf_symptoms"]
TAKEN = BP.question("taken_today")
T = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "reply",
    [
        "1",
        " 1 ",
        "1.",
        "#1",
        "(1)",
        "\uff11",  # full-width digit one
        "yes",
        "YES",
        "Yes!",
        "y",
        "yep",
        "1 yes",
        "1) Yes",
        "yes, thanks",
        "Yes I did",
        "si",
        "Sí",
        "SÍ, gracias",
        "👍",
        "👍🏽",
        "✅",
        "yes 😊",
    ],
)
def test_replies_that_choose_yes(reply: str) -> None:
    assert parse_reply(TAKEN, reply) == Answer(checkins.YES)


@pytest.mark.parametrize(
    "reply", ["2", "no", "No.", "NO!!", "n", "nope", "2 no", "👎", "no gracias"]
)
def test_replies_that_choose_no(reply: str) -> None:
    assert parse_reply(TAKEN, reply) == Answer(checkins.NO)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ("  ?! ", "empty"),
        ("1 2", "more than one answer"),
        ("yes no", "more than one answer"),
        ("3", "no answer option"),
        ("11", "no answer option"),
        ("ok", "no answer option"),
        ("I forgot, will take it tonight", "no answer option"),
        ("no but I feel dizzy", "other words beside the answer"),
        ("yes sometimes", "other words beside the answer"),
        ("not yes", "other words beside the answer"),
        ("yes " * 60, "longer than an answer"),
    ],
)
def test_replies_a_person_must_read(reply: str, reason: str) -> None:
    assert parse_reply(TAKEN, reply) == Unparseable(reason)


@given(st.text(max_size=200))
def test_parsing_any_text_gives_an_answer_or_a_reason(text: str) -> None:
    parsed = parse_reply(TAKEN, text)
    assert isinstance(parsed, Answer | Unparseable)
    if isinstance(parsed, Answer):
        assert parsed.option in TAKEN.options


@given(
    option=st.sampled_from(checkins.YES_NO),
    data=st.data(),
)
def test_an_option_word_among_courtesy_and_punctuation_is_that_answer(
    option: checkins.Option, data: st.DataObject
) -> None:
    word = data.draw(st.sampled_from(sorted(option.words)))
    filler = data.draw(st.lists(st.sampled_from(sorted(checkins.COURTESY)), max_size=3))
    punct = data.draw(st.sampled_from(["", ".", "!", ",", " ", "?"]))
    cased = data.draw(st.sampled_from([word, word.upper(), word.title()]))
    reply = " ".join([cased + punct, *filler])
    assert parse_reply(TAKEN, reply) == Answer(option)


def test_the_twilio_opt_in_keyword_yes_parses_as_an_answer() -> None:
    """The inbound handler takes it as the answer when a check-in is open (docs/checkins.md)."""
    assert parse_reply(TAKEN, "YES") == Answer(checkins.YES)
    for keyword in ("START", "STOP", "HELP", "UNSTOP"):
        assert isinstance(parse_reply(TAKEN, keyword), Unparseable)


def test_questions_are_asked_in_the_patients_language_with_how_to_reply() -> None:
    first = HF.questions[0]
    assert checkins.prompt_text(first, "es-MX")[0] == "es"
    assert checkins.prompt_text(first, "es-MX")[1].endswith("Responda 1 para sí, 2 para no.")
    assert checkins.prompt_text(first, "fr") == (
        "en",
        first.text["en"] + " Reply 1 for yes, 2 for no.",
    )
    assert checkins.not_read("es", "112").startswith("Perdone")
    assert "911" in checkins.thanks("en", "911")
    assert checkins.prompt_text(TAKEN, "en", intro="Hello.")[1].startswith("Hello.\nDid you take")
    assert HF.after("orthopnea") == HF.question("ankle_swelling")
    assert HF.after("ankle_swelling") is None
    assert HF.complete({"orthopnea": "yes", "ankle_swelling": "no"})
    assert not HF.complete({"orthopnea": "yes"})
    assert (HF.fhir_id, HF.canonical) == ("hf-symptoms", "urn:rpm:questionnaire:hf_symptoms|1")
    for q in checkins.QUESTIONNAIRES.values():
        for question in q.questions:
            assert set(question.text) >= {"en", "es"}
            # every question fits one SMS of two segments at most
            for language in question.text:
                _, text = checkins.prompt_text(question, language)
                assert len(text) <= 2 * 67, text


# --- what answers and weights propose --------------------------------------------------------


def report(**answers: str) -> symptoms.Report:
    return symptoms.Report("p1", 7, T, answers)


def weights(*kg: float) -> list[tuple[datetime, float]]:
    """One weight a day, the last one now."""
    return [(T - timedelta(days=len(kg) - 1 - i, hours=1), w) for i, w in enumerate(kg)]


@pytest.mark.parametrize(
    ("answers", "kg", "open_rules", "severity"),
    [
        ({"orthopnea": "no", "ankle_swelling": "no"}, (80.0, 81.5), {}, None),
        ({"orthopnea": "yes"}, (80.0, 80.1), {}, Severity.MEDIUM),
        ({"orthopnea": "no", "ankle_swelling": "yes"}, (80.0,), {}, Severity.LOW),
        ({"orthopnea": "yes"}, (80.0, 80.5, 81.0), {}, Severity.HIGH),  # +1.0 kg in 3 days
        ({"orthopnea": "yes"}, (80.0, 80.4, 80.8), {}, Severity.MEDIUM),  # +0.8: not rising
        ({"ankle_swelling": "yes"}, (), {"hf.weight_gain_7d": Severity.HIGH}, Severity.HIGH),
        ({"orthopnea": "yes"}, (), {"bp.stage2": Severity.HIGH}, Severity.MEDIUM),
    ],
)
def test_severity_from_answers_and_weight(
    answers: dict[str, str],
    kg: tuple[float, ...],
    open_rules: dict[str, Severity],
    severity: Severity | None,
) -> None:
    found = symptoms.propose(report(**answers), weights(*kg), open_rules)
    assert (found.severity if found else None) is severity


def test_a_proposal_carries_its_evidence() -> None:
    found = symptoms.propose(report(orthopnea="yes"), weights(79.0, 80.0, 80.5, 81.0), {})
    assert found is not None
    assert found.rule_id == "hf.congestion_reported"
    evidence = found.evidence
    # The 79.0 kg of four days ago is outside the 3-day window.
    assert [w["kg"] for w in evidence["weights_kg"]] == [80.0, 80.5, 81.0]
    assert evidence["weight_gain_kg"] == 1.0
    assert evidence["check_in"] == {"response_id": 7, "answers": {"orthopnea": "yes"}}
    assert "ESC" in evidence["source"]
    assert found.explanation == (
        "Patient answered yes by SMS check-in: more breathless lying flat. "
        "Weight change in the last 3 days: +1.0 kg."
    )
    assert found.advice_i18n["es"]


# --- check-in campaigns ------------------------------------------------------------------

WEEKLY = {"kind": "weekly", "weekday": "wed", "local_time": "10:00"}


@pytest.mark.parametrize(
    "document",
    [
        {"segment": "hf", "trigger": WEEKLY, "checkin": "hf_symptoms"},
        {
            "segment": "bp",
            "trigger": WEEKLY,
            "checkin": "bp_medication",
            "reply_window_hours": 6,
            "messages": {"en": "Hello.", "es": "Hola."},
        },
        {"segment": "bp", "trigger": WEEKLY, "messages": {"en": "Hello."}},
    ],
)
def test_a_campaign_document_round_trips(document: dict[str, object]) -> None:
    spec = campaigns.parse(document)
    assert campaigns.parse(spec.document()) == spec
    assert spec.checkin == document.get("checkin")
    # A campaign without a check-in stores the document it stored before check-ins existed.
    assert ("checkin" in spec.document()) is ("checkin" in document)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"checkin": "phq9"}, "checkin is one of"),
        ({"checkin": "hf_symptoms", "reply_window_hours": 0}, "reply_window_hours"),
        ({"checkin": "hf_symptoms", "reply_window_hours": 73}, "reply_window_hours"),
        ({"reply_window_hours": 6, "messages": {"en": "x"}}, "for a check-in campaign"),
        ({}, "messages maps languages"),
    ],
)
def test_check_in_campaigns_that_cannot_run(document: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidCampaign, match=says):
        campaigns.parse({"segment": "hf", "trigger": WEEKLY, **document})
