"""Going live with a real Twilio account (issue 18): sending through a Messaging Service,
holding messages while Twilio refuses the credentials, and counting and showing messages
Twilio reports failed or undelivered. Against the real PostgreSQL, the official twilio
client and the local Twilio stand-in, which checks every request against Twilio's OpenAPI
description."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from alerts.sms import TwilioSms
from rpm.settings import ApiSettings, ChannelSettings, SmsSettings
from rpm.storage import channels as channel_store
from rpm.storage import outbox as outbox_store
from rpm.workers.channels import ChannelRouter
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.twilio_support import (
    add_alert,
    add_patient,
    add_staff,
    daytime_clock,
    patient_payload,
    serve_hooks,
)

SERVICE = "MG0123456789abcdef0123456789abcdef"
SENDER = "+15005550006"
WHATSAPP_SENDER = "+15005550007"
PHONE = "+15550100001"


@pytest.fixture
async def hooks(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve_hooks(pool) as url:
        yield url


def channel(twilio: TwilioSink, **options: Any) -> TwilioSms:
    assert twilio.base_url is not None
    return TwilioSms(
        **{
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "from_number": SENDER,
            "base_url": twilio.base_url,
            "validity_period_s": 900,
            **options,
        }
    )


def worker(
    pool: asyncpg.Pool, sms: TwilioSms, hooks: str, hold: Any = None, **config: Any
) -> SmsOutboxWorker:
    delivery = DeliveryConfig.from_settings(
        SmsSettings(outbox_poll_interval_s=0.05),
        ApiSettings(public_base_url=hooks, dashboard_url="https://rpm.example.org"),
    )
    delivery = DeliveryConfig(
        **{**{f: getattr(delivery, f) for f in delivery.__dataclass_fields__}, **config}
    )
    router = ChannelRouter(ChannelSettings(whatsapp_from=WHATSAPP_SENDER))
    clock = daytime_clock()
    return SmsOutboxWorker(pool, sms, delivery, clock=clock, router=router, hold=hold)


async def enqueue(pool: asyncpg.Pool, key: str, payload: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        await outbox_store.enqueue(conn, [("sms", key, payload)])
        return int(await conn.fetchval("SELECT id FROM outbox WHERE dedupe_key = $1", key))


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


# -- Messaging Service ----------------------------------------------------------------------


async def test_with_a_messaging_service_sms_and_whatsapp_name_it_and_sms_no_from(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE)
        await add_patient(conn, "p2", "+15550100002")
        await channel_store.set_channels(conn, "p2", "whatsapp", ["sms"])
        await add_staff(conn, "n1", "+15550100009")
        alert_id = await add_alert(conn, "p1", severity="MEDIUM")
    # p2 wrote on WhatsApp: free-form messages may go to them for 24 hours.
    await twilio.send_inbound(
        f"{hooks}/twilio/sms", from_="whatsapp:+15550100002", body="Hola", to="whatsapp:x"
    )
    await enqueue(pool, "sms", patient_payload("p1", alert_id))
    await enqueue(pool, "wa", patient_payload("p2", None))
    await enqueue(
        pool,
        "staff",
        {
            "recipient": "staff",
            "staff_id": "n1",
            "patient_id": "p1",
            "alert_id": alert_id,
            "template": "escalation",
            "tier": 1,
            "severity": "MEDIUM",
            "rule_id": "htn.stage2_persistent",
            "title": "Blood pressure",
            "urgent": True,
        },
    )
    sms = channel(twilio, messaging_service_sid=SERVICE)
    try:
        assert await worker(pool, sms, hooks).drain_once() == 3
    finally:
        await sms.close()

    assert twilio.rejected == []  # every request as Twilio's OpenAPI description has it
    by_to = {m.to: m for m in twilio.messages}
    for to in (PHONE, "+15550100009"):  # the patient's SMS and the nurse's escalation
        assert (by_to[to].messaging_service_sid, by_to[to].from_) == (SERVICE, None)
        assert "From" not in by_to[to].form
    whatsapp = by_to["whatsapp:+15550100002"]
    assert (whatsapp.messaging_service_sid, whatsapp.from_) == (
        SERVICE,
        f"whatsapp:{WHATSAPP_SENDER}",
    )


async def test_without_a_messaging_service_the_from_number_sends(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE)
    await enqueue(pool, "sms", patient_payload("p1", None))
    sms = channel(twilio)
    try:
        assert await worker(pool, sms, hooks).drain_once() == 1
    finally:
        await sms.close()
    [sent] = twilio.messages
    assert (sent.from_, sent.messaging_service_sid) == (SENDER, None)


def test_the_setting_takes_only_a_messaging_service_sid() -> None:
    assert SmsSettings(messaging_service_sid=SERVICE).messaging_service_sid == SERVICE
    assert SmsSettings(messaging_service_sid="").messaging_service_sid is None
    with pytest.raises(ValueError, match="Messaging Service SID"):
        SmsSettings(messaging_service_sid="PN0123456789abcdef0123456789abcdef")


async def test_the_stand_in_refuses_what_is_not_a_messaging_service_sid(
    twilio: TwilioSink,
) -> None:
    from rpm.domain.errors import PermanentDeliveryError

    sms = channel(twilio, messaging_service_sid="MG-not-one")
    try:
        with pytest.raises(PermanentDeliveryError) as refused:
            await sms.send(PHONE, "hello")
    finally:
        await sms.close()
    assert refused.value.code == 21701


# -- refused credentials --------------------------------------------------------------------


async def test_refused_credentials_hold_messages_until_they_work_again(
    pool: asyncpg.Pool, twilio: TwilioSink, hooks: str
) -> None:
    from rpm.api.health import Operations, readiness
    from rpm.metrics import DatabaseGauges, credentials_families
    from rpm.workers.credentials import CredentialsHold

    async with pool.acquire() as conn:
        for n in range(3):
            await add_patient(conn, f"p{n}", f"+1555010000{n}")
        alert_id = await add_alert(conn, "p0", severity="CRITICAL")
    crisis = await enqueue(
        pool, "crisis", patient_payload("p0", alert_id, severity="CRITICAL", urgent=True)
    )
    others = [await enqueue(pool, f"k{n}", patient_payload(f"p{n}", None)) for n in (1, 2)]
    twilio.rotate_auth_token("rotated-in-the-console")  # ours is now wrong
    sms = channel(twilio)
    hold = CredentialsHold(retry_s=60)
    try:
        w = worker(pool, sms, hooks, hold=hold)
        assert await w.drain_once() == 3

        # One request was refused (the critical one, tried first); none was failed or counted.
        assert [status for status, _ in twilio.rejected] == [401]
        assert twilio.rejected[0][1]["To"] == "+15550100000"
        waiting = await rows(pool, "SELECT * FROM outbox ORDER BY id")
        assert [r["id"] for r in waiting] == [crisis, *others]
        for r in waiting:
            assert r["failed_at"] is None
            assert r["delivered_at"] is None
            assert r["attempts"] == 0
            assert r["last_error"].startswith("held: Twilio refused the credentials")
        assert hold.held
        assert w.outcomes["held"] == 3
        assert w.outcomes["refused"] == 0

        # /readyz: degraded (the server still serves), the twilio check says why.
        checks = await readiness(pool, Operations())
        assert checks["twilio"] == "credentials refused: 3 messages and calls held"
        gauges = DatabaseGauges(pool, max_age_s=0, timeout_s=2)
        await gauges.refresh()
        [held] = [m for m in gauges.collect() if m.name == "rpm_outbox_held"]
        assert {s.labels["channel"]: s.value for s in held.samples} == {"sms": 3, "voice": 0}
        [refused, refusals] = list(credentials_families(hold)())
        assert refused.samples[0].value == 1
        assert refusals.samples[0].value == 1

        # Nothing is due before the hold's retry; then, with the token fixed, all go out.
        assert await w.drain_once() == 0
        twilio.rotate_auth_token(TWILIO_TOKEN)
        w._clock.advance(timedelta(seconds=61))  # type: ignore[attr-defined]
        assert await w.drain_once() == 3
    finally:
        await sms.close()
    assert next(m.to for m in twilio.messages) == "+15550100000"  # the critical one first
    assert len(twilio.messages) == 3
    assert not hold.held
    sent = await rows(pool, "SELECT * FROM outbox WHERE delivered_at IS NOT NULL")
    assert len(sent) == 3
    assert (await readiness(pool, Operations()))["twilio"] == "ok"


async def test_readyz_is_degraded_not_unready_while_credentials_are_refused(
    pool: asyncpg.Pool,
) -> None:
    from fastapi import FastAPI
    from httpx import ASGITransport, AsyncClient

    from rpm.api import health
    from rpm.api.health import Operations

    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO outbox (channel, dedupe_key, payload, last_error) "
            "VALUES ('sms', 'h', '{}', 'held: Twilio refused the credentials (twilio 401)')"
        )
    app = FastAPI()
    app.state.pool = pool
    app.state.operations = Operations()
    app.include_router(health.router)
    async with AsyncClient(transport=ASGITransport(app), base_url="http://t") as http:
        r = await http.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "degraded",
        "checks": {
            "database": "ok",
            "migrations": "ok",
            "twilio": "credentials refused: 1 messages and calls held",
        },
    }


# -- failed and undelivered messages --------------------------------------------------------


def test_error_classes() -> None:
    from alerts.delivery_errors import CLASSES, describe, error_class

    assert [error_class(c) for c in (30034, 30006, 30007, 30036, None, 63099, 12345)] == [
        "unregistered",
        "unreachable",
        "filtered",
        "expired",
        "none",
        "whatsapp",
        "other",
    ]
    assert {error_class(c) for c in range(20000, 70000)} <= set(CLASSES)
    assert describe("sms", "undelivered", 30034) == (
        "sms undelivered: Twilio 30034 (US number not registered for A2P 10DLC)"
    )


async def test_an_undelivered_critical_message_is_counted_shown_on_the_alert_and_followed(
    pool: asyncpg.Pool, twilio: TwilioSink
) -> None:
    from fastapi import FastAPI
    from prometheus_client.parser import text_string_to_metric_families

    from rpm.api.health import Operations

    ops = Operations()
    app = FastAPI()
    app.state.operations = ops
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE)
        alert_id = await add_alert(conn, "p1", severity="CRITICAL")
    item = await enqueue(
        pool, "crisis", patient_payload("p1", alert_id, severity="CRITICAL", urgent=True)
    )
    sms = channel(twilio)
    async with serve_hooks(pool, app=app) as hooks:
        try:
            assert await worker(pool, sms, hooks).drain_once() == 1
        finally:
            await sms.close()
        [sent] = twilio.messages
        for status, code in (("sent", None), ("undelivered", 30034), ("undelivered", 30034)):
            answer = await twilio.send_status(sent.sid, status, error_code=code)
            assert answer.status == 204

    text = (await ops.metrics.render()).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "rpm_message_failures"]
    counted = {
        tuple(s.labels[k] for k in ("channel", "status", "error_class")): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counted == {("sms", "undelivered", "unregistered"): 1.0}  # once, however repeated
    events = await rows(
        pool, "SELECT * FROM alert_events WHERE alert_id = $1 ORDER BY id", alert_id
    )
    [failed] = [e for e in events if e["action"] == "message_failed"]
    assert failed["actor"] == "system:twilio"
    assert failed["note"] == (
        "patient sms undelivered: Twilio 30034 (US number not registered for A2P 10DLC)"
    )
    assert (failed["from_state"], failed["to_state"]) == ("open", "open")
    # The patient's route (sms, then voice) goes on: a call is queued for the alert.
    [call] = await rows(pool, "SELECT * FROM outbox WHERE channel = 'voice'")
    assert call["dedupe_key"].startswith(f"voice:alert:{alert_id}:round:")
    assert item != call["id"]
    # A call follows, so the patient may still be reached: the escalation keeps its delay.
    assert not [e for e in events if e["action"] == "patient_unreachable"]


async def test_a_critical_message_no_channel_carries_pages_the_nurse_now(
    pool: asyncpg.Pool, twilio: TwilioSink
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", PHONE)
        await conn.execute("UPDATE patients SET channel_fallback = '{}' WHERE id = 'p1'")
        alert_id = await add_alert(conn, "p1", severity="CRITICAL")
        await conn.execute(
            """UPDATE alerts SET last_notified_at = now(),
                                 next_escalation_at = now() + interval '10 minutes'
                WHERE id = $1""",
            alert_id,
        )
    await enqueue(pool, "crisis", patient_payload("p1", alert_id, severity="CRITICAL", urgent=True))
    sms = channel(twilio)
    async with serve_hooks(pool) as hooks:
        try:
            assert await worker(pool, sms, hooks).drain_once() == 1
        finally:
            await sms.close()
        [sent] = twilio.messages
        for _ in range(2):  # a repeated callback changes nothing more
            answer = await twilio.send_status(sent.sid, "undelivered", error_code=30006)
            assert answer.status == 204

    events = await rows(
        pool, "SELECT * FROM alert_events WHERE alert_id = $1 ORDER BY id", alert_id
    )
    [unreachable] = [e for e in events if e["action"] == "patient_unreachable"]
    assert unreachable["note"] == "no channel reached the patient: the on-call nurse is paged now"
    [due] = await rows(
        pool, "SELECT next_escalation_at <= now() AS now FROM alerts WHERE id = $1", alert_id
    )
    assert due["now"]  # the timers page tier 1 on their next pass (alerts.escalation)
    assert not await rows(pool, "SELECT * FROM outbox WHERE channel = 'voice'")
