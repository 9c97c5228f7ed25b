"""WhatsApp, fallback and voice calls through the real path: the outbox workers against a real
PostgreSQL, the official twilio client against the Twilio stand-in (which checks every request
against Twilio's OpenAPI description), and Twilio's webhooks back over HTTP, signed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import uvicorn
from fastapi import FastAPI

from alerts.sms import TwilioSms
from alerts.voice import TwilioVoice
from rpm.api import twilio_hooks, twilio_voice
from rpm.backoff import Backoff
from rpm.settings import ApiSettings, ChannelSettings, SmsSettings
from rpm.storage import alert_reads
from rpm.storage import channels as channel_store
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.workers.channels import ChannelRouter
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from rpm.workers.voice_calls import VoiceCallWorker, VoiceConfig
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.twilio_support import (
    Clock,
    add_alert,
    add_patient,
    daytime_clock,
    hook_settings,
    patient_payload,
)

SENDER = "+15005550006"
WHATSAPP_SENDER = "+15005550007"
PHONE = "+15550100001"
HX_ALERT = "HX" + "0123456789abcdef" * 2
HX_ALERT_ES = "HX" + "fedcba9876543210" * 2


@contextlib.asynccontextmanager
async def serve(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The Twilio webhooks (messages and voice) on a real HTTP server; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = FastAPI()
    app.state.pool = pool
    app.state.settings = hook_settings(api={"port": port})
    app.include_router(twilio_hooks.router)
    app.include_router(twilio_voice.router)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def hooks(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve(pool) as url:
        yield url


@pytest.fixture
async def sms(twilio: TwilioSink) -> AsyncIterator[TwilioSms]:
    channel = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number=SENDER,
        base_url=twilio.base_url,
    )
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture
async def voice(twilio: TwilioSink) -> AsyncIterator[TwilioVoice]:
    channel = TwilioVoice(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number=SENDER,
        base_url=twilio.base_url,
    )
    try:
        yield channel
    finally:
        await channel.close()


def message_worker(
    pool: asyncpg.Pool, sms: TwilioSms, hooks: str, clock: Clock, **channels: Any
) -> SmsOutboxWorker:
    config = DeliveryConfig.from_settings(
        SmsSettings(outbox_poll_interval_s=0.05),
        ApiSettings(public_base_url=hooks, dashboard_url="https://rpm.example.org"),
    )
    settings = ChannelSettings(
        **{
            "whatsapp_from": WHATSAPP_SENDER,
            "whatsapp_templates": {"alert": HX_ALERT, "alert:es": HX_ALERT_ES},
            **channels,
        }
    )
    return SmsOutboxWorker(pool, sms, config, clock=clock, router=ChannelRouter(settings))


def voice_worker(
    pool: asyncpg.Pool, voice: TwilioVoice, hooks: str, clock: Clock, after_min: float = 15
) -> VoiceCallWorker:
    api = ApiSettings(public_base_url=hooks)
    config = VoiceConfig.from_settings(
        ChannelSettings(voice_unacknowledged_min=after_min), SmsSettings(), api
    )
    config = VoiceConfig(
        **{
            **{f: getattr(config, f) for f in config.__dataclass_fields__},
            "backoff": Backoff(0.01, 0.02),
        }
    )
    return VoiceCallWorker(pool, voice, config, clock=clock)


async def patient(
    pool: asyncpg.Pool,
    preferred: str = "sms",
    fallback: list[str] | None = None,
    *,
    language: str = "en",
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE, language=language)
        await channel_store.set_channels(conn, "p1", preferred, fallback)


async def enqueue(pool: asyncpg.Pool, key: str, payload: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        await outbox_store.enqueue(conn, [("sms", key, payload)])
        return int(await conn.fetchval("SELECT id FROM outbox WHERE dedupe_key = $1", key))


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


def clock_now() -> Clock:
    return daytime_clock()


# -- WhatsApp -------------------------------------------------------------------------------


async def test_whatsapp_patient_inside_the_window_gets_a_free_form_whatsapp_message(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, hooks: str
) -> None:
    await patient(pool, "whatsapp")
    # The patient wrote to us on WhatsApp: Twilio posts it to the SMS webhook.
    inbound = await twilio.send_inbound(
        f"{hooks}/twilio/sms", from_=f"whatsapp:{PHONE}", body="Hola", to=f"whatsapp:{SENDER}"
    )
    assert inbound.status == 200
    [replied] = await rows(pool, "SELECT * FROM sms_messages WHERE direction = 'inbound'")
    assert replied["patient_id"] == "p1"  # found by the number behind the whatsapp: address
    item = await enqueue(pool, "k1", patient_payload("p1", None))

    assert await message_worker(pool, sms, hooks, clock_now()).drain_once() == 1

    [sent] = twilio.messages
    assert (sent.to, sent.from_) == (f"whatsapp:{PHONE}", f"whatsapp:{WHATSAPP_SENDER}")
    assert sent.body is not None
    assert sent.body.startswith("Health update, Home Health Monitoring (")
    assert sent.content_sid is None
    assert sent.status_callback == f"{hooks}/twilio/status"
    [message] = await rows(pool, "SELECT * FROM sms_messages WHERE outbox_id = $1", item)
    assert (message["channel"], message["twilio_sid"]) == ("whatsapp", sent.sid)
    touches = await rows(pool, "SELECT * FROM interactions WHERE patient_id = 'p1' ORDER BY id")
    assert [(t["channel"], t["kind"], t["direction"], t["ref"]) for t in touches] == [
        ("whatsapp", "reply", "inbound", f"sms:{replied['twilio_sid']}"),
        ("whatsapp", "alert", "outbound", f"sms:{sent.sid}"),
    ]


async def test_outside_the_window_whatsapp_sends_the_approved_template_in_the_patients_language(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, hooks: str
) -> None:
    await patient(pool, "whatsapp", language="es")
    await enqueue(pool, "k1", patient_payload("p1", None, advice={"es": "Llame a su médico."}))

    await message_worker(pool, sms, hooks, clock_now()).drain_once()

    [sent] = twilio.messages
    assert sent.to == f"whatsapp:{PHONE}"
    assert sent.content_sid == HX_ALERT_ES
    assert sent.body is None  # a template carries no Body (Twilio error 63016 otherwise)
    variables = json.loads(sent.form["ContentVariables"])
    assert "Llame a su médico." in variables["1"]
    [message] = await rows(pool, "SELECT channel, content_sid FROM sms_messages")
    assert message == {"channel": "whatsapp", "content_sid": HX_ALERT_ES}


async def test_outside_the_window_without_a_template_the_message_goes_by_sms(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, hooks: str
) -> None:
    await patient(pool, "whatsapp")
    await enqueue(pool, "k1", patient_payload("p1", None))

    await message_worker(pool, sms, hooks, clock_now(), whatsapp_templates={}).drain_once()

    [sent] = twilio.messages
    assert (sent.to, sent.from_) == (PHONE, SENDER)


async def test_whatsapp_refused_for_good_falls_back_to_sms_once(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, hooks: str
) -> None:
    await patient(pool, "whatsapp", ["sms"])
    twilio.not_on_whatsapp(PHONE)
    item = await enqueue(pool, "k1", patient_payload("p1", None))
    worker = message_worker(pool, sms, hooks, clock_now())

    assert await worker.drain_once() == 1  # WhatsApp refused (63003): SMS queued
    assert await worker.drain_once() == 1  # the SMS
    assert await worker.drain_once() == 0

    [sent] = twilio.messages
    assert (sent.to, sent.from_) == (PHONE, SENDER)
    [refused] = twilio.rejected
    assert refused[0] == 400
    [failed, fallback] = await rows(pool, "SELECT * FROM outbox ORDER BY id")
    assert failed["id"] == item
    assert failed["failed_at"] is not None
    assert "63003" in failed["last_error"]
    assert fallback["dedupe_key"] == f"fallback:{item}"
    assert (fallback["payload"]["channel"], fallback["payload"]["tried"]) == ("sms", ["whatsapp"])
    assert fallback["delivered_at"] is not None
    channels = await rows(pool, "SELECT channel, status, error_code FROM sms_messages ORDER BY id")
    assert channels == [
        {"channel": "whatsapp", "status": "failed", "error_code": 63003},
        {"channel": "sms", "status": "queued", "error_code": None},
    ]
    assert worker.router.outcomes[("whatsapp", "refused")] == 1
    assert worker.router.outcomes[("sms", "sent")] == 1


async def test_whatsapp_reported_failed_falls_back_to_sms_once_however_often_reported(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, hooks: str
) -> None:
    await patient(pool, "whatsapp", ["sms"])
    await enqueue(pool, "k1", patient_payload("p1", None))
    worker = message_worker(pool, sms, hooks, clock_now())
    await worker.drain_once()
    [whatsapp] = twilio.messages

    for _ in range(3):  # Twilio retries callbacks; only the first moves the message
        answer = await twilio.send_status(whatsapp.sid, "failed", error_code=63016)
        assert answer.status == 204
    await worker.drain_once()
    await worker.drain_once()

    assert [m.to for m in twilio.messages] == [f"whatsapp:{PHONE}", PHONE]
    assert len(await rows(pool, "SELECT 1 FROM outbox WHERE dedupe_key LIKE 'fallback:%'")) == 1


# -- voice --------------------------------------------------------------------------------


async def critical_alert(pool: asyncpg.Pool) -> tuple[int, int]:
    async with pool.acquire() as conn:
        alert_id = await add_alert(conn, "p1", severity="CRITICAL")
    payload = patient_payload(
        "p1",
        alert_id,
        severity="CRITICAL",
        urgent=True,
        title="Hypertensive crisis",
        advice={"en": "Call your doctor now.", "es": "Llame a su médico ahora."},
    )
    return alert_id, await enqueue(pool, f"sms:alert:{alert_id}:open", payload)


async def test_undelivered_critical_alert_sms_gets_a_call_and_pressing_1_confirms_it(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "sms", language="es")
    alert_id, _ = await critical_alert(pool)
    clock = clock_now()
    await message_worker(pool, sms, hooks, clock).drain_once()
    [text] = twilio.messages

    await twilio.send_status(text.sid, "undelivered", error_code=30003)
    await twilio.send_status(text.sid, "undelivered", error_code=30003)  # a retried callback
    calls = voice_worker(pool, voice, hooks, clock)
    assert await calls.drain_once() == 1
    assert await calls.drain_once() == 0

    [call] = twilio.calls
    assert (call.to, call.from_) == (PHONE, SENDER)
    assert call.status_callback == f"{hooks}/twilio/voice/status"
    assert set(call.status_callback_events) == {"initiated", "ringing", "answered", "completed"}
    languages = {language for language, _ in call.said}
    assert languages == {"es-MX"}
    assert any("Llame a su médico ahora." in text for _, text in call.said)
    assert any("Oprima 1" in text for _, text in call.said)
    [outbox_call] = await rows(pool, "SELECT * FROM outbox WHERE channel = 'voice'")
    assert outbox_call["dedupe_key"] == f"voice:alert:{alert_id}:round:0"
    assert outbox_call["payload"]["reason"] == "undelivered"

    for status in ("ringing", "in-progress", "ringing"):  # a late one never goes back
        assert (await twilio.send_call_status(call.sid, status)).status == 204
    pressed = await twilio.answer(call.sid, "1")
    again = await twilio.answer(call.sid, "1")  # Twilio retried the webhook
    await twilio.send_call_status(call.sid, "completed", duration_s=31)

    assert pressed.status == 200
    assert "<Say" in pressed.body
    assert "Gracias" in pressed.body
    assert again.status == 200
    [recorded] = await rows(pool, "SELECT * FROM voice_calls")
    assert (recorded["call_sid"], recorded["alert_id"], recorded["digits"]) == (
        call.sid,
        alert_id,
        "1",
    )
    assert recorded["confirmed_at"] is not None
    assert recorded["status"] == "completed"
    async with pool.acquire() as conn:
        events = await alert_reads.events(conn, alert_id)
        alert = await alert_reads.get(conn, alert_id)
    confirmations = [e for e in events if e["action"] == "patient_confirmed"]
    assert len(confirmations) == 1
    assert confirmations[0]["actor"] == "patient:p1"
    assert call.sid in confirmations[0]["note"]
    assert alert is not None
    assert alert["state"] == "open"  # the patient confirms hearing it; a nurse acknowledges
    touches = await rows(pool, "SELECT channel FROM interactions WHERE channel = 'voice'")
    assert len(touches) == 1


async def test_another_key_is_recorded_but_confirms_nothing(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "voice")
    alert_id, item = await critical_alert(pool)
    clock = clock_now()

    await message_worker(pool, sms, hooks, clock).drain_once()  # handed to a call
    await voice_worker(pool, voice, hooks, clock).drain_once()

    assert twilio.messages == []
    [handed] = await rows(pool, "SELECT * FROM outbox WHERE id = $1", item)
    assert handed["result"] == {"channel": "voice", "call": f"voice:alert:{alert_id}:round:0"}
    [call] = twilio.calls
    answer = await twilio.answer(call.sid, "2")
    assert "care team will contact you" in answer.body
    [recorded] = await rows(pool, "SELECT digits, confirmed_at FROM voice_calls")
    assert recorded == {"digits": "2", "confirmed_at": None}
    async with pool.acquire() as conn:
        events = await alert_reads.events(conn, alert_id)
    assert "patient_confirmed" not in {e["action"] for e in events}


async def test_a_critical_alert_left_unanswered_gets_one_call_per_round(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "sms")
    alert_id, _ = await critical_alert(pool)
    clock = clock_now()
    await message_worker(pool, sms, hooks, clock).drain_once()
    calls = voice_worker(pool, voice, hooks, clock, after_min=15)

    clock.advance(timedelta(minutes=14))
    assert await calls.drain_once() == 0  # not yet
    clock.advance(timedelta(minutes=2))
    assert await calls.drain_once() == 1
    clock.advance(timedelta(minutes=30))
    assert await calls.drain_once() == 0  # once per round

    [call] = twilio.calls
    assert call.to == PHONE
    [queued] = await rows(pool, "SELECT payload FROM outbox WHERE channel = 'voice'")
    assert queued["payload"]["reason"] == "unacknowledged"
    assert queued["payload"]["alert_id"] == alert_id
    assert calls.outcomes["placed"] == 1


async def test_no_call_once_a_nurse_acknowledged_or_for_a_patient_who_said_stop(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "sms")
    alert_id, _ = await critical_alert(pool)
    clock = clock_now()
    await message_worker(pool, sms, hooks, clock).drain_once()
    async with pool.acquire() as conn:
        await conn.execute("UPDATE alerts SET state = 'acknowledged' WHERE id = $1", alert_id)
    clock.advance(timedelta(minutes=20))

    assert await voice_worker(pool, voice, hooks, clock).drain_once() == 0  # nothing queued

    async with pool.acquire() as conn:
        await conn.execute("UPDATE alerts SET state = 'open' WHERE id = $1", alert_id)
        await sms_store.opt_out(conn, ["p1"])
    calls = voice_worker(pool, voice, hooks, clock)
    assert await calls.drain_once() == 1

    assert twilio.calls == []
    [dropped] = await rows(pool, "SELECT last_error, failed_at FROM outbox WHERE channel='voice'")
    assert dropped["last_error"] == "opted out"
    assert calls.outcomes["dropped"] == 1


async def test_twilio_outage_retries_the_call_and_places_it_once(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "voice")
    await critical_alert(pool)
    clock = clock_now()
    await message_worker(pool, sms, hooks, clock).drain_once()
    calls = voice_worker(pool, voice, hooks, clock)
    twilio.fail_next(2, 503)

    for _ in range(5):
        await calls.drain_once()
        clock.advance(timedelta(seconds=1))

    assert len(twilio.calls) == 1
    assert calls.outcomes["retry"] == 2
    assert calls.outcomes["placed"] == 1
    [row] = await rows(pool, "SELECT attempts, delivered_at FROM outbox WHERE channel = 'voice'")
    assert row["attempts"] == 3
    assert row["delivered_at"] is not None
    assert len(await rows(pool, "SELECT 1 FROM voice_calls")) == 1


async def test_voice_webhooks_need_twilios_signature(
    pool: asyncpg.Pool, twilio: TwilioSink, sms: TwilioSms, voice: TwilioVoice, hooks: str
) -> None:
    await patient(pool, "voice")
    await critical_alert(pool)
    clock = clock_now()
    await message_worker(pool, sms, hooks, clock).drain_once()
    await voice_worker(pool, voice, hooks, clock).drain_once()
    [call] = twilio.calls

    forged = await twilio.answer(call.sid, "1", signed=False)

    assert forged.status == 403
    [recorded] = await rows(pool, "SELECT confirmed_at FROM voice_calls")
    assert recorded["confirmed_at"] is None
