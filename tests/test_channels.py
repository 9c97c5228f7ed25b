"""The channel policy (alerts/channels.py), the call's words (alerts/voice_script.py) and its
TwiML (alerts/voice.py): pure, no loop, no servers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts import voice_script
from alerts.channels import (
    Callee,
    CallSituation,
    Carriage,
    FreeForm,
    Route,
    Template,
    VoiceWork,
    address,
    after_failure,
    choose,
    confirmed,
    split_address,
    template_sid,
    voice_gate,
    whatsapp_content,
)
from alerts.voice import MAX_TWIML_CHARS, call_twiml
from rpm.domain.errors import BadWork

pytestmark = pytest.mark.pure

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
MESSAGE = Carriage(critical_alert=False, whatsapp_sender=True)
CRITICAL = Carriage(critical_alert=True, whatsapp_sender=True)
HX = "HX" + "0123456789abcdef" * 2


def test_route_is_preferred_then_fallback_each_once() -> None:
    assert Route("whatsapp", ("sms", "whatsapp", "voice")).order == ("whatsapp", "sms", "voice")
    assert Route.of("carrier-pigeon", ["fax", "voice"]) == Route("sms", ("voice",))


@pytest.mark.parametrize(
    ("route", "carriage", "tried", "expected"),
    [
        pytest.param(Route("sms"), MESSAGE, (), "sms", id="sms"),
        pytest.param(Route("whatsapp"), MESSAGE, (), "whatsapp", id="whatsapp"),
        pytest.param(
            Route("whatsapp"),
            Carriage(False, whatsapp_sender=False),
            (),
            "sms",
            id="no-whatsapp-sender",
        ),
        pytest.param(
            Route("whatsapp"),
            Carriage(False, True, whatsapp_content=False),
            (),
            "sms",
            id="outside-window-without-template",
        ),
        pytest.param(Route("voice"), MESSAGE, (), "sms", id="voice-carries-no-ordinary-message"),
        pytest.param(Route("voice"), CRITICAL, (), "voice", id="voice-carries-critical-alerts"),
        pytest.param(Route("whatsapp", ()), MESSAGE, ("whatsapp",), None, id="exhausted"),
    ],
)
def test_choose_takes_the_first_channel_that_can_carry(
    route: Route, carriage: Carriage, tried: tuple[str, ...], expected: str | None
) -> None:
    assert choose(route, carriage, tried) == expected


def test_after_failure_moves_forward_and_never_repeats() -> None:
    route = Route("whatsapp", ("sms", "voice"))

    assert after_failure(route, MESSAGE, "whatsapp") == "sms"
    assert after_failure(route, MESSAGE, "sms", ["whatsapp"]) is None  # voice: critical only
    assert after_failure(route, CRITICAL, "sms", ["whatsapp"]) == "voice"
    assert after_failure(route, CRITICAL, "whatsapp", ["sms"]) == "voice"
    assert after_failure(Route("sms", ("whatsapp",)), MESSAGE, "whatsapp") is None


@pytest.mark.parametrize(
    ("since", "content"),
    [
        (timedelta(hours=1), FreeForm()),
        (timedelta(hours=23, minutes=59), FreeForm()),
        (timedelta(hours=24), Template(HX)),
        (None, Template(HX)),
    ],
)
def test_whatsapp_is_free_form_only_within_24_hours_of_the_patients_message(
    since: timedelta | None, content: object
) -> None:
    last = T0 - since if since is not None else None

    assert whatsapp_content(T0, last, {"alert": HX}, "alert", "en") == content


def test_outside_the_window_without_a_template_whatsapp_cannot_carry() -> None:
    assert whatsapp_content(T0, None, {"campaign": HX}, "alert", "en") is None


def test_templates_are_found_by_kind_and_language() -> None:
    es = "HX" + "f" * 32
    templates = {"alert": HX, "alert:es": es}

    assert template_sid(templates, "alert", "es-MX") == es
    assert template_sid(templates, "alert", "en") == HX
    assert template_sid(templates, "campaign", "es") is None


def test_addresses() -> None:
    assert address("whatsapp", "+15550100001") == "whatsapp:+15550100001"
    assert address("sms", "+15550100001") == "+15550100001"
    assert split_address("whatsapp:+15550100001") == ("whatsapp", "+15550100001")
    assert split_address("+15550100001") == ("sms", "+15550100001")


def voice_work(**changes: Any) -> VoiceWork:
    payload = {
        "patient_id": "p1",
        "alert_id": 7,
        "round": 0,
        "reason": "undelivered",
        "title": "Hypertensive crisis",
        "advice": {"en": "Call your doctor."},
        **changes,
    }
    return VoiceWork.from_payload(payload)


def test_voice_work_round_trips_and_keys_one_call_per_alert_round() -> None:
    work = voice_work()

    assert VoiceWork.from_payload(work.payload()) == work
    assert work.dedupe_key == "voice:alert:7:round:0"
    assert voice_work(reason="unacknowledged").dedupe_key == work.dedupe_key


@pytest.mark.parametrize(
    "payload", [{"reason": "because"}, {"alert_id": "7"}, {"advice": ["x"]}, {"round": "x"}]
)
def test_bad_voice_payloads_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(BadWork):
        VoiceWork.from_payload({**voice_work().payload(), **payload})


CALLEE = Callee("+15550100001")


@pytest.mark.parametrize(
    ("situation", "reason"),
    [
        pytest.param(CallSituation(voice_work(), CALLEE, "open"), None, id="call"),
        pytest.param(CallSituation(voice_work(), CALLEE, "acknowledged"), None, id="undelivered"),
        pytest.param(
            CallSituation(voice_work(reason="unacknowledged"), CALLEE, "acknowledged"),
            "alert acknowledged before the call",
            id="acknowledged-meanwhile",
        ),
        pytest.param(
            CallSituation(voice_work(), CALLEE, "resolved"),
            "alert resolved before the call",
            id="resolved",
        ),
        pytest.param(CallSituation(voice_work(), None, "open"), "unknown patient", id="unknown"),
        pytest.param(
            CallSituation(voice_work(), Callee(None), "open"), "no phone number", id="no-phone"
        ),
        pytest.param(
            CallSituation(voice_work(), Callee("+1555", consent=False), "open"),
            "no consent",
            id="no-consent",
        ),
        pytest.param(
            CallSituation(voice_work(), Callee("+1555", opted_out=True), "open"),
            "opted out",
            id="stop-revokes-calls-too",
        ),
        pytest.param(
            CallSituation(voice_work(), Callee("+1555", route=Route("sms", ())), "open"),
            "voice is not among the patient's channels",
            id="no-voice-in-route",
        ),
        pytest.param(
            CallSituation(voice_work(), CALLEE, "open", confirmed=True),
            "already confirmed by the patient",
            id="confirmed",
        ),
    ],
)
def test_voice_gate(situation: CallSituation, reason: str | None) -> None:
    assert voice_gate(situation) == reason


def test_only_a_one_confirms() -> None:
    assert confirmed("1")
    assert confirmed(" 1 ")
    assert not confirmed("2")
    assert not confirmed("")


def test_the_call_says_the_alert_in_the_patients_language_and_asks_for_1() -> None:
    script = voice_script.critical_alert(
        advice={"es": "Llame a su médico."},
        language="es-MX",
        service="Clínica Norte",
        emergency_number="112",
    )

    assert script.say_language == "es-MX"
    assert "Llame a su médico." in script.message
    assert "112" in script.message
    assert "Oprima 1" in script.prompt

    assert script.message.startswith("Esta es una llamada urgente de Clínica Norte")
    english = voice_script.critical_alert(advice={}, language="de", service="North Clinic")
    assert english.say_language == "en-US"
    assert english.message.startswith(
        "This is an urgent call from North Clinic, your care team. Your reading is in the danger"
    )
    assert "Sit down" in english.message


def test_call_twiml_gathers_one_digit_twice_then_hangs_up() -> None:
    script = voice_script.critical_alert(advice={}, language="en", service="North Clinic")
    twiml = call_twiml(script, "https://rpm.example.org/twilio/voice/gather?outbox=5")

    root = ET.fromstring(twiml)
    gathers = root.findall("Gather")
    assert [g.get("numDigits") for g in gathers] == ["1", "1"]
    assert {g.get("action") for g in gathers} == {
        "https://rpm.example.org/twilio/voice/gather?outbox=5"
    }
    assert [s.get("language") for s in gathers[0].iter("Say")] == ["en-US", "en-US"]
    assert [child.tag for child in root] == ["Gather", "Gather", "Say", "Hangup"]
    assert len(twiml) < MAX_TWIML_CHARS
