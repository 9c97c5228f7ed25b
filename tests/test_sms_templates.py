"""SMS texts (alerts/templates.py, pure): plain language without clinical words, the care
team's service name, the patient's language and time zone, two segments, and nurse escalations
without patient names or numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from alerts import templates, voice_script
from alerts.symptoms import ADVICE as SYMPTOM_EN
from alerts.symptoms import ADVICE_I18N as SYMPTOM_ADVICE
from rpm.domain import Severity
from rules.programs import builtin_programs
from simulators.twilio_messages import count_segments as sink_segments

pytestmark = pytest.mark.pure

NOW = datetime(2026, 3, 2, 15, 5, tzinfo=UTC)  # Monday 10:05 in New York
NEW_YORK = ZoneInfo("America/New_York")
SERVICE = "Riverside Heart Clinic"
ADVICE = {
    "en": "Rest for 5 minutes and measure again.",
    "es": "Descanse 5 minutos y vuelva a medir.",
}


def alert_text(
    severity: Severity = Severity.CRITICAL,
    language: str = "en",
    advice: dict[str, str] | None = None,
    at: datetime = NOW,
    service: str = SERVICE,
) -> str:
    return templates.patient_alert(
        severity=severity,
        advice=ADVICE if advice is None else advice,
        language=language,
        at=at,
        now=NOW,
        zone=NEW_YORK,
        service=service,
    )


def every_builtin_rule() -> list[tuple[str, dict[str, str]]]:
    rules = {}
    for program in builtin_programs().values():
        for r in program.rules:
            rules[f"{program.program}:{r.id}"] = (r.id, {"en": r.advice, **r.advice_i18n})
    return sorted(rules.values())


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize(("rule_id", "advice"), every_builtin_rule())
def test_every_builtin_rule_fits_two_segments(
    rule_id: str, advice: dict[str, str], severity: Severity, language: str
) -> None:
    text = alert_text(severity, language, advice, at=NOW - timedelta(hours=20))

    assert templates.count_segments(text) <= 2, (rule_id, len(text), text)
    assert sink_segments(text) == templates.count_segments(text)


@pytest.mark.parametrize("language", ["en", "es"])
def test_critical_says_danger_what_to_do_emergency_and_nurse(language: str) -> None:
    text = alert_text(Severity.CRITICAL, language)

    assert "911" in text
    assert ADVICE[language] in text
    if language == "en":
        assert "danger range" in text
        assert "nurse has been told" in text
    else:
        assert "peligroso" in text
        assert "enfermer" in text
    assert SERVICE in text


def test_emergency_line_is_not_repeated_when_the_advice_has_it() -> None:
    text = alert_text(advice={"en": "If you have chest pain, call {emergency_number}."})

    assert text.count("911") == 1


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize(("rule_id", "advice"), every_builtin_rule())
def test_every_text_names_the_deployments_emergency_number_only(
    rule_id: str, advice: dict[str, str], language: str
) -> None:
    # RPM_SMS_EMERGENCY_NUMBER=112 (Europe): no text says 911, and naming it once is enough.
    text = templates.patient_alert(
        severity=Severity.CRITICAL,
        advice=advice,
        language=language,
        at=NOW,
        now=NOW,
        zone=NEW_YORK,
        service=SERVICE,
        emergency_number="112",
    )
    call = voice_script.critical_alert(
        advice=advice, language=language, service=SERVICE, emergency_number="112"
    )
    for said in (text, call.message):
        assert "911" not in said, (rule_id, said)
        assert said.count("112") == 1, (rule_id, said)
        assert "{" not in said, (rule_id, said)
    assert templates.count_segments(text) <= 2, (rule_id, text)


@pytest.mark.parametrize("severity", [Severity.HIGH, Severity.MEDIUM, Severity.LOW])
def test_non_critical_has_no_emergency_line_but_tells_of_the_nurse(severity: Severity) -> None:
    text = alert_text(severity)

    assert "911" not in text
    assert "nurse" in text
    assert "danger" not in text


def test_nurse_line_is_not_repeated_when_the_advice_says_the_team_knows() -> None:
    advice = {"en": "Your care team has been told about your readings and will contact you."}

    text = alert_text(Severity.MEDIUM, advice=advice)

    assert "nurse" not in text
    assert text.count("been told") == 1


def test_missing_translation_uses_generic_advice_in_the_patients_language() -> None:
    text = alert_text(Severity.CRITICAL, "es", advice={"en": "Rest and measure again."})

    assert "Rest and measure" not in text
    assert "descanse" in text.lower()
    assert "911" in text


@pytest.mark.parametrize(
    ("tag", "language"),
    [("es", "es"), ("es-MX", "es"), ("ES_us", "es"), ("en-GB", "en"), ("fr", "en"), ("", "en")],
)
def test_language_tags_fall_back_to_english(tag: str, language: str) -> None:
    assert templates.language_of(tag) == language


def test_unknown_language_gets_the_english_text() -> None:
    assert alert_text(language="fr") == alert_text(language="en")


def test_times_are_in_the_patients_time_zone() -> None:
    at = datetime(2026, 3, 2, 14, 42, tzinfo=UTC)  # 09:42 in New York, the same day as NOW

    assert "(9:42 AM)" in alert_text(at=at)
    assert "(9:42)" in alert_text(at=at, language="es")


def test_an_earlier_day_is_named() -> None:
    at = datetime(2026, 3, 2, 3, 30, tzinfo=UTC)  # Sunday 22:30 in New York

    assert "(Sun 10:30 PM)" in alert_text(at=at)
    assert "(dom 22:30)" in alert_text(at=at, language="es")


def test_accents_are_kept_when_they_fit_and_replaced_when_they_cost_segments() -> None:
    short = alert_text(Severity.LOW, "es", advice={"es": "Siga su plan."})
    long = alert_text(
        Severity.CRITICAL, "es", advice={"es": "Descanse y vuelva a medir la presión."}
    )

    assert "enfermería" in short  # UCS-2, two segments
    assert templates.count_segments(short) == 2
    assert "presion" in long  # GSM-7 lookalikes: two segments instead of three
    assert "enfermeria" in long
    assert templates.count_segments(long) == 2


def test_fit_keeps_text_that_already_fits() -> None:
    assert templates.fit("Volverá mañana") == "Volverá mañana"
    too_long = "á" + "a" * 200
    assert templates.fit(too_long) == "a" * 201


def test_escalation_names_ids_severity_title_minutes_and_link_only() -> None:
    text = templates.escalation(
        alert_id=4711,
        severity=Severity.CRITICAL,
        title="Hypertensive crisis",
        patient_id="pat-42",
        tier=2,
        minutes_unacknowledged=17,
        link="https://rpm.example.org/?alert=4711",
    )

    assert text == (
        "RPM escalation, tier 2: alert 4711 (CRITICAL) Hypertensive crisis, patient pat-42, "
        "unacknowledged for 17 min. https://rpm.example.org/?alert=4711"
    )
    assert templates.count_segments(text) == 1


def test_escalation_shortens_long_titles() -> None:
    text = templates.escalation(
        alert_id=1,
        severity=Severity.HIGH,
        title="x" * 300,
        patient_id="p",
        tier=1,
        minutes_unacknowledged=30,
        link="https://rpm.example.org/?alert=1",
    )

    assert "x" * 57 + "..." in text
    assert templates.count_segments(text) <= 2


@pytest.mark.parametrize("language", ["en", "es", "fr"])
def test_keyword_replies_fit_and_say_how_to_stop_or_restart(language: str) -> None:
    help_text = templates.help_reply(language, service=SERVICE, contact="+1 555 0100")
    out = templates.opted_out_reply(language, service=SERVICE)
    back = templates.opted_in_reply(language, service=SERVICE)
    received = templates.reply_received(language, service=SERVICE)
    unknown = templates.unknown_sender_reply(service=SERVICE)
    consent = templates.consent_confirmation(language, service=SERVICE)

    for text in (help_text, out, back, received, unknown, consent):
        assert templates.count_segments(text) <= 2, text
    assert "STOP" in help_text
    assert "START" in help_text
    assert "+1 555 0100" in help_text
    assert "START" in out
    assert "STOP" in back
    assert "911" in received  # replies are not watched all the time
    # The opt-in confirmation (CTIA Messaging Principles and Best Practices, 2023): who,
    # about what, how often, HELP and STOP, and that rates may apply.
    assert SERVICE in consent
    assert "HELP" in consent
    assert "STOP" in consent
    spoken = templates.language_of(language)
    assert ("tarifas" if spoken == "es" else "Msg & data rates may apply") in consent


def test_emergency_number_is_configurable() -> None:
    text = templates.patient_alert(
        severity=Severity.CRITICAL,
        advice={"en": "Sit upright and measure again."},
        language="en",
        at=NOW,
        now=NOW,
        zone=UTC,
        service=SERVICE,
        emergency_number="112",
    )

    assert "call 112 now" in text
    assert "911" not in text
    assert "112" in templates.help_reply("en", service=SERVICE, emergency_number="112")


@pytest.mark.parametrize(
    ("text", "segments"),
    [("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("á" * 70, 1), ("á" * 71, 2)],
)
def test_segment_count_matches_the_sink(text: str, segments: int) -> None:
    assert templates.count_segments(text) == segments == sink_segments(text)


# --- words a patient reads on a lock screen ----------------------------------------------
# Every patient-facing text (alert SMS at every severity, keyword and reply texts, the voice
# call) in every supported language, with every built-in rule's advice and the symptom
# check-in advice: no clinical jargon (templates.JARGON), and the care team's service named.


def patient_texts(language: str, service: str) -> list[str]:
    advices = [advice for _, advice in every_builtin_rule()]
    advices.append({"en": SYMPTOM_EN, **SYMPTOM_ADVICE})
    texts = [
        alert_text(severity, language, advice, service=service)
        for advice in advices
        for severity in Severity
    ]
    texts += [
        templates.help_reply(language, service=service, contact="+1 555 0100"),
        templates.opted_out_reply(language, service=service),
        templates.opted_in_reply(language, service=service),
        templates.consent_confirmation(language, service=service),
        templates.reply_received(language, service=service),
        templates.unknown_sender_reply(service=service),
    ]
    texts += [
        voice_script.critical_alert(advice=advice, language=language, service=service).message
        for advice in advices
    ]
    return texts


@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_no_patient_text_carries_clinical_jargon(language: str) -> None:
    assert set(voice_script.LANGUAGES) == set(templates.LANGUAGES)
    for text in patient_texts(language, SERVICE):
        lowered = text.lower()
        found = [word for word in templates.JARGON if word in lowered]
        assert not found, (found, text)


@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_every_patient_text_names_the_care_teams_service(language: str) -> None:
    for service in (SERVICE, "Clínica del Norte"):
        for text in patient_texts(language, service):
            # GSM-7 lookalikes may replace the accent when it would cost a segment
            assert service in text or service.replace("í", "i") in text, text


@pytest.mark.parametrize("language", templates.LANGUAGES)
def test_every_builtin_rule_has_patient_advice_in_every_language(language: str) -> None:
    for rule_id, advice in every_builtin_rule():
        assert advice.get(language), (rule_id, language)


def test_the_jargon_list_catches_what_the_issue_found() -> None:
    # Words of nurse-facing rule titles a patient used to read on a lock screen.
    for title in ("Early warning score (NEWS2, partial)", "Hypertensive crisis", "hypoxaemia"):
        assert any(word in title.lower() for word in templates.JARGON), title
