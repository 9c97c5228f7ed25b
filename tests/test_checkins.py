"""Two-way check-ins through the real path: a check-in campaign planned by the real planner,
its question sent by the real SMS worker to the Twilio stand-in, the patient's replies posted
as signed Twilio webhooks, the answers read back over the FHIR API, unreadable replies in the
nurse's inbox (API and dashboard page), and heart-failure answers with rising weights opening
an alert through the alert policy.

Every clock is pinned (a Wednesday in June 2026, 11:00 in New York); nothing here reads the
wall clock for what it checks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from alerts.sms import TwilioSms
from rpm.api import dashboard, dashboard_inbox, inbox
from rpm.api import fhir as fhir_api
from rpm.storage import staff as staff_store
from rpm.workers.campaigns import CampaignPlanner
from simulators.twilio_sink import TwilioSink
from tests import dashboard_helpers
from tests.helpers import api_app, staff_headers
from tests.test_engagement import (
    NOW,
    add_patient,
    ingest,
    publish_campaign,
    publish_segment,
    reading,
    sms_worker,
)
from tests.test_engagement import channel as channel
from tests.test_engagement import programs as programs
from tests.test_twilio_inbound import reply_of
from tests.twilio_support import Clock, serve_hooks

HF_PHONE = "+15550100001"
BP_PHONE = "+15550100002"
TEAM = dashboard_helpers.TEAM  # the dashboard nurse's care team
HF_CAMPAIGN = {
    "segment": "hf",
    "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "10:00"},
    "checkin": "hf_symptoms",
}
BP_CAMPAIGN = {
    "segment": "bp",
    "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "10:00"},
    "messages": {"en": "Hello from your care team.", "es": "Hola de su equipo de salud."},
    "checkin": "bp_medication",
}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def hooks(pool: asyncpg.Pool, clock: Clock) -> AsyncIterator[str]:
    """The Twilio webhooks with the FHIR API, the inbox API and the dashboard, over HTTP."""
    app = api_app(pool)
    app.include_router(inbox.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard_inbox.router)
    app.include_router(fhir_api.router)
    async with serve_hooks(pool, app=app, clock=clock) as url:
        yield url


@pytest.fixture
async def admin(pool: asyncpg.Pool, hooks: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hooks, headers=await staff_headers(pool)) as client:
        yield client


async def enrol(
    pool: asyncpg.Pool, patient_id: str, phone: str, program: str, language: str = "en"
) -> str:
    async with pool.acquire() as conn:
        device = await add_patient(
            conn,
            patient_id,
            programs=(program,),
            phone=phone,
            language=language,
            device_kind="scale" if program == "heart_failure" else "bp_cuff",
        )
        await staff_store.create_team(conn, TEAM, "Test ward")
        await staff_store.set_patient_team(conn, patient_id, TEAM)
    return device


async def start(pool: asyncpg.Pool, name: str, campaign: dict[str, Any], program: str) -> None:
    segment = name.split("-")[0]
    await publish_segment(
        pool, segment, {"where": {"fact": "program", "op": "includes", "value": program}}
    )
    await publish_campaign(pool, name, campaign)
    assert (await CampaignPlanner(pool, daily_cap=3).tick(NOW)).planned == {name: 1}


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def test_a_heart_failure_check_in_end_to_end(
    pool: asyncpg.Pool,
    programs: None,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    admin: httpx.AsyncClient,
    clock: Clock,
) -> None:
    scale = await enrol(pool, "p-hf", HF_PHONE, "heart_failure")
    # +1.0 kg in three days: below every weight alert of the program, so none is open.
    for kg, days in ((80.0, 2), (80.5, 1), (81.0, 0)):
        at = NOW - timedelta(days=days, hours=1)
        await ingest(pool, [reading(scale, "weight", at, weight=kg)])
    assert await rows(pool, "SELECT id FROM alerts") == []
    await start(pool, "hf-checkin", HF_CAMPAIGN, "heart_failure")

    assert await sms_worker(pool, channel, NOW).drain_once() == 1
    [asked] = twilio.messages
    assert asked.to == HF_PHONE
    assert asked.body == (
        "Are you more short of breath than usual when lying flat, or needing more pillows to "
        "sleep? Reply 1 for yes, 2 for no."
    )
    [prompt] = await rows(pool, "SELECT link_id, state, sms_id FROM checkin_prompts")
    assert (prompt["link_id"], prompt["state"]) == ("orthopnea", "open")
    assert prompt["sms_id"] is not None

    # Yes to breathless lying flat, with the weight rising: a high alert, and the next question.
    clock.advance(timedelta(minutes=5))
    url = f"{hooks}/twilio/sms"
    answer = await twilio.send_inbound(url, from_=HF_PHONE, body="1 yes", sid="SM" + "1" * 32)
    assert reply_of(answer) is None  # the next question follows through the outbox
    [alert] = await rows(pool, "SELECT * FROM alerts")
    assert (alert["rule_id"], alert["severity"], alert["state"]) == (
        "hf.congestion_reported",
        "HIGH",
        "open",
    )
    assert alert["evidence"]["weight_gain_kg"] == 1.0
    assert alert["evidence"]["check_in"]["answers"] == {"orthopnea": "yes"}
    assert [w["kg"] for w in alert["evidence"]["weights_kg"]] == [80.0, 80.5, 81.0]
    events = await rows(
        pool, "SELECT actor, action FROM alert_events WHERE alert_id = $1", alert["id"]
    )
    assert events == [{"actor": "system:rules", "action": "open"}]

    # The patient is told of the alert (urgent), and asked the second question: a check-in
    # they are answering is not dropped for the open high alert.
    assert await sms_worker(pool, channel, NOW + timedelta(minutes=6)).drain_once() == 2
    bodies = [m.body for m in twilio.messages[1:]]
    assert any(b.startswith("Health alert") for b in bodies), bodies
    assert "Are your ankles or legs more swollen than usual? Reply 1 for yes, 2 for no." in bodies

    clock.advance(timedelta(minutes=5))
    last = "SM" + "2" * 32
    answer = await twilio.send_inbound(url, from_=HF_PHONE, body="No.", sid=last)
    assert reply_of(answer) == (
        "Thank you, your answers went to your care team. For emergencies call 911."
    )
    again = await twilio.send_inbound(url, from_=HF_PHONE, body="No.", sid=last)  # a retry
    assert again.status == 200

    # The answers in the record, over the FHIR API.
    bundle = (await admin.get("/fhir/QuestionnaireResponse", params={"patient": "p-hf"})).json()
    [entry] = bundle["entry"]
    response = entry["resource"]
    QuestionnaireResponse.model_validate(response)
    assert response == (await admin.get(f"/fhir/QuestionnaireResponse/{response['id']}")).json()
    assert response["status"] == "completed"
    assert response["questionnaire"] == "urn:rpm:questionnaire:hf_symptoms|1"
    assert response["authored"] == (NOW + timedelta(minutes=10)).isoformat()
    answers = {i["linkId"]: i["answer"][0]["valueCoding"]["code"] for i in response["item"]}
    assert answers == {"orthopnea": "LA33-6", "ankle_swelling": "LA32-8"}
    questionnaire = (await admin.get("/fhir/Questionnaire/hf-symptoms")).json()
    Questionnaire.model_validate(questionnaire)
    assert questionnaire["url"] + "|" + questionnaire["version"] == response["questionnaire"]

    # Still one episode (the complete check-in recurs on it), each reply one ledger touch.
    assert len(await rows(pool, "SELECT id FROM alerts")) == 1
    ledger = await rows(
        pool, "SELECT kind, direction, ref FROM interactions WHERE kind IN ('reply', 'checkin')"
    )
    assert sorted((r["kind"], r["direction"]) for r in ledger) == [
        ("checkin", "outbound"),
        ("checkin", "outbound"),
        ("reply", "inbound"),
        ("reply", "inbound"),
    ]
    assert {r["ref"] for r in ledger if r["kind"] == "reply"} == {
        "sms:SM" + "1" * 32,
        f"sms:{last}",
    }
    assert await rows(pool, "SELECT id FROM inbox_items") == []


async def test_without_rising_weight_breathlessness_is_a_medium_alert(
    pool: asyncpg.Pool,
    programs: None,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    clock: Clock,
) -> None:
    scale = await enrol(pool, "p-hf", HF_PHONE, "heart_failure")
    for kg, days in ((80.0, 2), (80.1, 1), (80.0, 0)):
        await ingest(
            pool, [reading(scale, "weight", NOW - timedelta(days=days, hours=1), weight=kg)]
        )
    await start(pool, "hf-checkin", HF_CAMPAIGN, "heart_failure")
    await sms_worker(pool, channel, NOW).drain_once()
    clock.advance(timedelta(minutes=5))
    await twilio.send_inbound(f"{hooks}/twilio/sms", from_=HF_PHONE, body="👍")
    [alert] = await rows(pool, "SELECT rule_id, severity FROM alerts")
    assert alert == {"rule_id": "hf.congestion_reported", "severity": "MEDIUM"}


async def test_an_unreadable_reply_lands_in_the_inbox_and_a_nurse_handles_it(
    pool: asyncpg.Pool,
    programs: None,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpm")
    caplog.set_level(logging.DEBUG, logger="alerts")
    await enrol(pool, "p-bp", BP_PHONE, "hypertension", language="es")
    await start(pool, "bp-checkin", BP_CAMPAIGN, "hypertension")
    await sms_worker(pool, channel, NOW).drain_once()
    [asked] = twilio.messages
    assert asked.body == (
        "Hola de su equipo de salud.\n¿Tomó hoy su medicina para la presión? Responda 1 para "
        "sí, 2 para no."
    )

    clock.advance(timedelta(minutes=3))
    url = f"{hooks}/twilio/sms"
    unread = "Se me olvidó, la tomo esta noche"
    answer = await twilio.send_inbound(url, from_=BP_PHONE, body=unread)
    text = reply_of(answer)
    assert text is not None
    assert text.startswith("Perdone, no pudimos leer su respuesta. Responda 1 para sí")

    await dashboard_helpers.add_nurse(pool)
    other = await staff_headers(pool, "olga.other", role="nurse", teams=["ward-other"])
    async with httpx.AsyncClient(base_url=hooks, headers=other) as outsider:
        assert (await outsider.get("/api/inbox")).json() == []
        refused = await outsider.post("/api/inbox/1/handled", json={})
        assert refused.status_code == 404

    async with httpx.AsyncClient(base_url=hooks) as browser:
        await dashboard_helpers.sign_in(browser)
        [item] = (await browser.get("/api/inbox")).json()
        assert item["body"] == unread
        assert item["reason"] == "unparseable answer (no answer option)"
        assert (item["questionnaire"], item["question"]) == ("bp_medication", "taken_today")
        page = await browser.get("/dashboard/inbox")
        assert page.status_code == 200
        assert unread in page.text
        assert 'aria-current="page">Inbox' in page.text

        # The prompt stays open: a readable reply is the answer.
        clock.advance(timedelta(minutes=2))
        answer = await twilio.send_inbound(url, from_=BP_PHONE, body="Sí")
        assert reply_of(answer) == (
            "Gracias, sus respuestas llegaron a su equipo de salud. En una emergencia llame al 911."
        )

        # Handled from the page (a form with the CSRF token), audited; a second time is 409.
        token = dashboard_helpers.form_token(page.text, "csrf_token")
        done = await browser.post(
            f"/dashboard/inbox/{item['id']}/handled",
            data={"csrf_token": token, "note": "Called, she will take it tonight."},
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/dashboard/inbox?done=handled"
        again = await browser.post(
            f"/api/inbox/{item['id']}/handled", json={}, headers={"X-CSRF-Token": token}
        )
        assert again.status_code == 409
        [handled] = (await browser.get("/api/inbox", params={"state": "handled"})).json()
        assert (handled["handled_by"], handled["note"]) == (
            f"staff:{dashboard_helpers.NURSE_ID}",
            "Called, she will take it tonight.",
        )
        assert handled["handled_at"] == (NOW + timedelta(minutes=5)).isoformat().replace(
            "+00:00", "Z"
        )
    audits = await rows(
        pool,
        "SELECT actor, status, patient_ids FROM audit_log WHERE resource = 'inbox' "
        "AND action = 'handled' ORDER BY id",
    )
    assert [(a["actor"], a["status"]) for a in audits] == [
        ("staff:olga.other", 404),
        (f"staff:{dashboard_helpers.NURSE_ID}", 200),
        (f"staff:{dashboard_helpers.NURSE_ID}", 409),
    ]
    assert audits[1]["patient_ids"] == ["p-bp"]
    # Bodies and numbers are patient data: in the database and the API, never in the logs.
    assert "checkin prompt" in caplog.text  # the handler did log, by ids
    for secret in (unread, "Sí", BP_PHONE, "Called, she will"):
        assert secret not in caplog.text
    [stored] = await rows(pool, "SELECT status, answers FROM checkin_responses")
    assert stored["status"] == "completed"
    assert stored["answers"]["taken_today"]["code"] == "yes"


async def test_free_text_without_a_check_in_and_late_replies_go_to_the_inbox(
    pool: asyncpg.Pool,
    programs: None,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    clock: Clock,
) -> None:
    await enrol(pool, "p-bp", BP_PHONE, "hypertension")
    url = f"{hooks}/twilio/sms"
    answer = await twilio.send_inbound(url, from_=BP_PHONE, body="Feeling fine today")
    assert "care team will read" in (reply_of(answer) or "")

    await start(pool, "bp-checkin", BP_CAMPAIGN, "hypertension")
    await sms_worker(pool, channel, NOW).drain_once()
    clock.advance(timedelta(hours=25))  # past the 24 h reply window
    await twilio.send_inbound(url, from_=BP_PHONE, body="1")
    items = await rows(pool, "SELECT reason FROM inbox_items ORDER BY id")
    no_checkin = "free text, no check-in waiting for a reply"
    assert [i["reason"] for i in items] == [no_checkin, no_checkin]
    [stored] = await rows(pool, "SELECT status, answers FROM checkin_responses")
    assert (stored["status"], stored["answers"]) == ("in-progress", {})
    replies = await rows(pool, "SELECT id FROM interactions WHERE kind = 'reply'")
    assert len(replies) == 2


async def test_yes_answers_an_open_check_in_but_opts_an_unsubscribed_patient_back_in(
    pool: asyncpg.Pool,
    programs: None,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    clock: Clock,
) -> None:
    """Twilio's YES is an opt-in keyword; to a subscribed patient with an open check-in it is
    the answer (docs/checkins.md)."""
    await enrol(pool, "p-bp", BP_PHONE, "hypertension")
    await start(pool, "bp-checkin", BP_CAMPAIGN, "hypertension")
    await sms_worker(pool, channel, NOW).drain_once()
    url = f"{hooks}/twilio/sms"
    clock.advance(timedelta(minutes=1))
    answer = await twilio.send_inbound(url, from_=BP_PHONE, body="YES")
    assert (reply_of(answer) or "").startswith("Thank you, your answers went")
    [stored] = await rows(pool, "SELECT status FROM checkin_responses")
    assert stored["status"] == "completed"

    # Next week's check-in, then STOP: YES is the opt-in keyword again, and answers nothing.
    await CampaignPlanner(pool, daily_cap=3).tick(NOW + timedelta(days=7))
    await sms_worker(pool, channel, NOW + timedelta(days=7)).drain_once()
    clock.now = NOW + timedelta(days=7, minutes=1)
    await twilio.send_inbound(url, from_=BP_PHONE, body="STOP")
    answer = await twilio.send_inbound(url, from_=BP_PHONE, body="YES")
    assert "again" in (reply_of(answer) or "")
    statuses = await rows(pool, "SELECT status FROM checkin_responses ORDER BY id")
    assert [s["status"] for s in statuses] == ["completed", "in-progress"]
    [patient] = await rows(pool, "SELECT sms_opted_out_at FROM patients")
    assert patient["sms_opted_out_at"] is None
    touches = await rows(pool, "SELECT id FROM interactions WHERE kind = 'reply'")
    assert len(touches) == 3  # YES, STOP, YES: every message from a patient is a touch
