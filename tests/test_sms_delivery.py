"""SMS delivery: the pure gate (alerts/sms_policy.py), then the outbox worker against a real
PostgreSQL, the official twilio client and the fake Twilio (status callbacks come back to the
webhook routes over HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from alerts import templates
from alerts.sms import TwilioSms
from alerts.sms_policy import (
    Defer,
    Drop,
    Recipient,
    SendNow,
    Situation,
    SmsWork,
    decide,
    local_day,
    quiet_until,
    zone_of,
)
from rpm.api import registry as registry_api
from rpm.domain.errors import BadWork
from rpm.settings import ApiSettings, SmsSettings
from rpm.storage import outbox as outbox_store
from rpm.storage import sms as sms_store
from rpm.workers import sms_outbox
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.localservices import free_port
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_CONTRACT, TWILIO_SID, TWILIO_TOKEN
from tests.helpers import api_app, eventually, staff_headers
from tests.twilio_support import (
    Clock,
    add_alert,
    add_patient,
    add_staff,
    local_time_after,
    patient_payload,
    serve_hooks,
)

NEW_YORK = ZoneInfo("America/New_York")
SENDER = "+15005550006"
QUIET = (time(21, 0), time(8, 0))

# -- the gate (pure) --------------------------------------------------------------------------

T_NOON = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)  # 12:00 in New York (EST)
T_NIGHT = datetime(2026, 3, 3, 4, 30, tzinfo=UTC)  # 23:30 in New York


def work(**changes: Any) -> SmsWork:
    payload = {**patient_payload("p1", 1), **changes}
    return SmsWork.from_payload(payload)


def patient(**changes: Any) -> Recipient:
    values: dict[str, Any] = {
        "phone": "+15550100001",
        "zone": NEW_YORK,
        "quiet_start": QUIET[0],
        "quiet_end": QUIET[1],
        **changes,
    }
    return Recipient(**values)


@pytest.mark.parametrize(
    ("situation", "verdict"),
    [
        pytest.param(Situation(work(), patient(), T_NOON), SendNow(), id="daytime"),
        pytest.param(Situation(work(), None, T_NOON), Drop("unknown patient"), id="unknown"),
        pytest.param(
            Situation(work(), patient(phone=None), T_NOON), Drop("no phone number"), id="no-phone"
        ),
        pytest.param(
            Situation(work(urgent=True), patient(consent=False), T_NOON),
            Drop("no SMS consent"),
            id="no-consent-even-urgent",
        ),
        pytest.param(
            Situation(work(urgent=True), patient(opted_out=True), T_NIGHT),
            Drop("opted out"),
            id="opted-out-even-urgent",
        ),
        pytest.param(
            Situation(work(), patient(), T_NIGHT),
            Defer(datetime(2026, 3, 3, 13, 0, tzinfo=UTC), "quiet hours"),
            id="quiet-until-8am-local",
        ),
        pytest.param(
            Situation(work(urgent=True), patient(), T_NIGHT, sent_today=9),
            SendNow(),
            id="urgent-bypasses-quiet-and-cap",
        ),
        pytest.param(
            Situation(work(), patient(), T_NOON, sent_today=3, daily_cap=3),
            Drop("daily cap"),
            id="cap",
        ),
        pytest.param(
            Situation(work(), patient(), T_NOON, sent_today=2, daily_cap=3), SendNow(), id="under"
        ),
        pytest.param(
            Situation(work(), patient(), T_NOON, alert_state="resolved"),
            Drop("alert resolved before the message was sent"),
            id="resolved-meanwhile",
        ),
        pytest.param(
            Situation(work(urgent=True), patient(), T_NOON, alert_state="resolved"),
            SendNow(),
            id="urgent-sent-even-if-resolved",
        ),
        pytest.param(
            Situation(work(), patient(quiet_start=time(9), quiet_end=time(9)), T_NIGHT),
            SendNow(),
            id="no-quiet-hours",
        ),
    ],
)
def test_gate(situation: Situation, verdict: object) -> None:
    assert decide(situation) == verdict


def escalation_work() -> SmsWork:
    return SmsWork.from_payload(
        {
            "recipient": "staff",
            "staff_id": "nurse-1",
            "patient_id": "p1",
            "alert_id": 7,
            "template": "escalation",
            "tier": 1,
            "severity": "CRITICAL",
            "rule_id": "bp.hypertensive_crisis",
            "title": "Hypertensive crisis",
            "urgent": True,
        }
    )


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        ("open", SendNow()),
        ("acknowledged", Drop("alert acknowledged before the escalation was sent")),
        (None, Drop("alert gone before the escalation was sent")),
    ],
)
def test_escalations_go_at_night_only_while_the_alert_is_open(
    state: str | None, verdict: object
) -> None:
    staff = Recipient("+15550199999")  # staff have no quiet hours or consent flags

    assert decide(Situation(escalation_work(), staff, T_NIGHT, alert_state=state)) == verdict


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (datetime(2026, 3, 2, 20, 59), None),
        (datetime(2026, 3, 2, 21, 0), datetime(2026, 3, 3, 8, 0)),
        (datetime(2026, 3, 2, 23, 59), datetime(2026, 3, 3, 8, 0)),
        (datetime(2026, 3, 3, 0, 0), datetime(2026, 3, 3, 8, 0)),
        (datetime(2026, 3, 3, 7, 59), datetime(2026, 3, 3, 8, 0)),
        (datetime(2026, 3, 3, 8, 0), None),
        # The night clocks go forward (8 March 2026, 02:00 -> 03:00): 08:00 EDT is 12:00 UTC.
        (datetime(2026, 3, 7, 23, 0), datetime(2026, 3, 8, 8, 0)),
    ],
)
def test_quiet_hours_span_midnight_in_local_time(now: datetime, until: datetime | None) -> None:
    local_now = now.replace(tzinfo=NEW_YORK)
    expected = until.replace(tzinfo=NEW_YORK).astimezone(UTC) if until else None

    assert quiet_until(local_now.astimezone(UTC), NEW_YORK, *QUIET) == expected


def test_quiet_hours_within_one_day() -> None:
    now = datetime(2026, 3, 2, 13, 30, tzinfo=UTC)

    assert quiet_until(now, UTC, time(13), time(14)) == datetime(2026, 3, 2, 14, tzinfo=UTC)
    assert quiet_until(now, UTC, time(14), time(15)) is None


def test_local_day_follows_the_time_zone_and_dst() -> None:
    start, end = local_day(datetime(2026, 3, 8, 12, tzinfo=UTC), NEW_YORK)

    assert start == datetime(2026, 3, 8, 5, tzinfo=UTC)
    assert end == datetime(2026, 3, 9, 4, tzinfo=UTC)  # a 23-hour day


def test_unknown_time_zone_is_utc() -> None:
    assert zone_of("Mars/Olympus_Mons") is UTC
    assert zone_of("") is UTC
    assert zone_of("Europe/Madrid") == ZoneInfo("Europe/Madrid")


@pytest.mark.parametrize(
    "payload",
    [
        {"recipient": "robot", "patient_id": "p", "severity": "LOW", "template": "alert"},
        {"recipient": "patient", "severity": "LOW", "template": "alert", "title": "t"},
        {"recipient": "patient", "patient_id": "p", "severity": "DIRE", "template": "alert"},
        {"recipient": "patient", "patient_id": "p", "severity": "LOW", "template": "escalation"},
        {"recipient": "staff", "patient_id": "p", "severity": "LOW", "template": "escalation"},
        {
            "recipient": "patient",
            "patient_id": "p",
            "severity": "LOW",
            "template": "alert",
            "advice": "not an object",
        },
        {"patient_id": "p"},
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: dict[str, Any]) -> None:
    with pytest.raises(BadWork):
        SmsWork.from_payload(payload)


def test_legacy_payload_is_sent_as_is_and_urgently() -> None:
    w = SmsWork.from_payload({"patient_id": "p", "alert_id": 3, "body": "hello"})

    assert (w.template, w.body, w.urgent, w.alert_id) == ("legacy", "hello", True, 3)


# -- the worker against PostgreSQL and the fake Twilio ----------------------------------------


@pytest.fixture
async def hooks(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with serve_hooks(pool) as url:
        yield url


@pytest.fixture
async def channel(twilio: TwilioSink) -> AsyncIterator[TwilioSms]:
    sms = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number=SENDER,
        base_url=twilio.base_url,
        validity_period_s=900,
    )
    try:
        yield sms
    finally:
        await sms.close()


def worker(
    pool: asyncpg.Pool, channel: TwilioSms, hooks: str, clock: Clock | None = None, **sms: Any
) -> SmsOutboxWorker:
    """A worker whose status callbacks go to ``hooks``; ``sms``: fields of ``SmsSettings``."""
    config = DeliveryConfig.from_settings(
        SmsSettings(**{"outbox_poll_interval_s": 0.05, **sms}),
        ApiSettings(public_base_url=hooks, dashboard_url="https://rpm.example.org"),
    )
    if clock is None:
        return SmsOutboxWorker(pool, channel, config)
    return SmsOutboxWorker(pool, channel, config, clock=clock)


async def enqueue(pool: asyncpg.Pool, key: str, payload: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        await outbox_store.enqueue(conn, [("sms", key, payload)])
        return int(await conn.fetchval("SELECT id FROM outbox WHERE dedupe_key = $1", key))


async def outbox_row(pool: asyncpg.Pool, item_id: int) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM outbox WHERE id = $1", item_id)
    assert row is not None
    return row


async def sms_rows(pool: asyncpg.Pool, **where: Any) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return list(reversed(await sms_store.messages(conn, **where)))


async def test_patient_alert_is_sent_recorded_and_followed_by_status_callbacks(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", timezone="America/New_York")
        alert_id = await add_alert(conn, "p1", severity="MEDIUM")
    item = await enqueue(pool, "k1", patient_payload("p1", alert_id))
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))

    assert await worker(pool, channel, hooks, clock).drain_once() == 1

    [sent] = twilio.messages
    assert sent.to == "+15550100001"
    assert sent.from_ == SENDER
    assert sent.status_callback == f"{hooks}/twilio/status"
    assert sent.validity_period == 900
    assert sent.body is not None
    assert "Home Health Monitoring" in sent.body  # RPM_SMS_SERVICE_NAME: the team has none
    assert "stage 2" not in sent.body  # the rule's title is the nurses' word
    assert "nurse" in sent.body
    row = await outbox_row(pool, item)
    assert row["delivered_at"] is not None
    assert row["result"] == {"sid": sent.sid, "status": "queued"}
    [message] = await sms_rows(pool, patient_id="p1")
    assert (message["direction"], message["twilio_sid"], message["status"]) == (
        "outbound",
        sent.sid,
        "queued",
    )
    assert (message["outbox_id"], message["alert_id"], message["body"]) == (
        item,
        alert_id,
        sent.body,
    )

    for status in ("sent", "delivered", "sent", "queued", "delivered"):  # late and repeated
        callback = await twilio.send_status(sent.sid, status)
        assert callback.status == 204
    [message] = await sms_rows(pool, patient_id="p1")
    assert message["status"] == "delivered"


async def test_undelivered_callback_keeps_twilios_error_code(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
    await enqueue(pool, "k1", patient_payload("p1", None, severity="CRITICAL", urgent=True))
    await worker(pool, channel, hooks).drain_once()
    [sent] = twilio.messages

    await twilio.send_status(sent.sid, "sent")
    await twilio.send_status(sent.sid, "undelivered", error_code=30003)
    await twilio.send_status(sent.sid, "delivered")  # a terminal state stays

    [message] = await sms_rows(pool, patient_id="p1")
    assert (message["status"], message["error_code"]) == ("undelivered", 30003)


async def test_callback_before_the_record_is_merged_not_lost(pool: asyncpg.Pool) -> None:
    """Twilio may call back before the worker's transaction commits."""
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
        early = await sms_store.apply_status(conn, "SM" + "1" * 32, "delivered", None)
        recorded = await sms_store.record_outbound(
            conn,
            outbox_id=None,
            patient_id="p1",
            staff_id=None,
            alert_id=None,
            sid="SM" + "1" * 32,
            status="queued",
            error_code=None,
            body="text",
            at=datetime.now(UTC),
        )
        rows = await sms_store.messages(conn, patient_id="p1")

    assert early is not None
    assert early.patient_id is None
    assert (recorded.id, recorded.status, recorded.patient_id) == (early.id, "delivered", "p1")
    assert [(r["body"], r["status"]) for r in rows] == [("text", "delivered")]


async def test_quiet_hours_defer_non_urgent_messages_to_their_end(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", timezone="America/New_York", quiet=QUIET)
    calm = await enqueue(pool, "calm", patient_payload("p1", None))
    urgent = await enqueue(
        pool, "urgent", patient_payload("p1", None, severity="HIGH", urgent=True)
    )
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(23, 30)))
    morning = local_time_after(clock.now, NEW_YORK, time(8, 0))
    w = worker(pool, channel, hooks, clock)

    assert await w.drain_once() == 2

    assert [m.body and "needs attention today" in m.body for m in twilio.messages] == [True]
    row = await outbox_row(pool, calm)
    assert row["next_attempt_at"] == morning
    assert (row["attempts"], row["last_error"], row["delivered_at"]) == (0, "quiet hours", None)
    assert (await outbox_row(pool, urgent))["delivered_at"] is not None

    clock.advance(morning - clock.now - timedelta(seconds=1))
    assert await w.drain_once() == 0  # not due until the end of quiet hours
    clock.advance(timedelta(seconds=1))
    assert await w.drain_once() == 1

    assert len(twilio.messages) == 2
    assert (await outbox_row(pool, calm))["attempts"] == 1


async def test_daily_cap_drops_non_urgent_messages_per_local_day(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        no_quiet_hours = (time(0), time(0))
        await add_patient(
            conn, "p1", "+15550100001", timezone="America/New_York", quiet=no_quiet_hours
        )
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))
    w = worker(pool, channel, hooks, clock, daily_cap=3)
    items = [await enqueue(pool, f"k{i}", patient_payload("p1", None)) for i in range(5)]

    await w.drain_once()

    rows = [await outbox_row(pool, i) for i in items]
    assert sum(r["delivered_at"] is not None for r in rows) == 3
    assert [r["last_error"] for r in rows if r["failed_at"] is not None] == ["daily cap"] * 2
    assert len(twilio.messages) == 3

    critical = patient_payload("p1", None, severity="CRITICAL", urgent=True)
    urgent = await enqueue(pool, "urgent", critical)
    await w.drain_once()
    assert (await outbox_row(pool, urgent))["delivered_at"] is not None  # not capped

    clock.advance(timedelta(hours=11, minutes=59))  # 23:59 local: still the same day
    late = await enqueue(pool, "late", patient_payload("p1", None))
    await w.drain_once()
    assert (await outbox_row(pool, late))["last_error"] == "daily cap"

    clock.advance(timedelta(hours=8, minutes=2))  # 08:01 the next day
    next_day = await enqueue(pool, "next-day", patient_payload("p1", None))
    await w.drain_once()
    assert (await outbox_row(pool, next_day))["delivered_at"] is not None
    assert len(twilio.messages) == 5


async def test_two_workers_sending_to_one_patient_at_once_keep_the_daily_cap(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    """Two workers (two processes, or gateways in active-active) each hold one of a patient's
    messages while Twilio is slow: the second waits for the first's outcome before counting
    the day's messages, so the cap holds (docs/alerts.md, "Daily cap")."""
    async with pool.acquire() as conn:
        no_quiet_hours = (time(0), time(0))
        await add_patient(
            conn, "p1", "+15550100001", timezone="America/New_York", quiet=no_quiet_hours
        )
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))
    first, second = (
        SmsOutboxWorker(
            pool,
            channel,
            replace(worker(pool, channel, hooks)._config, batch=1, daily_cap=3),
            clock=clock,
        )
        for _ in range(2)
    )
    sent_before = [await enqueue(pool, f"before{i}", patient_payload("p1", None)) for i in range(2)]
    await first.drain_once()
    await first.drain_once()
    assert [(await outbox_row(pool, i))["delivered_at"] is not None for i in sent_before] == [
        True,
        True,
    ]
    items = [await enqueue(pool, f"k{i}", patient_payload("p1", None)) for i in range(2)]
    twilio.hold()
    one = asyncio.create_task(first.drain_once())
    two: asyncio.Task[int] | None = None
    try:
        await eventually(lambda: _true(twilio.holding == 1))  # the third message is in flight
        two = asyncio.create_task(second.drain_once())
        # The second worker found the patient's turn taken (or, without turns, reached Twilio).
        await eventually(lambda: _true(second.turn_waits == 1 or twilio.holding > 1))
    finally:
        twilio.release()
        await asyncio.gather(one, *([two] if two else []))

    rows = [await outbox_row(pool, i) for i in items]
    assert [r["delivered_at"] is not None for r in rows] == [True, False]
    assert rows[1]["last_error"] == "daily cap"
    assert len(twilio.messages) == 3


async def test_a_message_whose_patient_is_held_by_a_stuck_worker_is_handed_back(
    pool: asyncpg.Pool,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another worker holds the patient's turn for longer than a send takes: the message is
    handed back to the outbox, due again and unsent, and goes once the turn is free."""
    monkeypatch.setattr(sms_outbox, "_TURN_WAIT_S", 0.2)
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", timezone="America/New_York")
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))
    w = worker(pool, channel, hooks, clock)
    item = await enqueue(pool, "k1", patient_payload("p1", None))
    async with pool.acquire() as stuck:
        await stuck.execute("SELECT pg_advisory_lock($1, hashtext('p1'))", 0x52504D53)
        await w.drain_once()
        row = await outbox_row(pool, item)
        assert (row["delivered_at"], row["failed_at"], row["attempts"]) == (None, None, 0)
        assert row["last_error"] == "another worker is messaging the patient"
        assert w.turn_waits == 1
        assert twilio.messages == []
        await stuck.execute("SELECT pg_advisory_unlock($1, hashtext('p1'))", 0x52504D53)
    await w.drain_once()
    assert (await outbox_row(pool, item))["delivered_at"] is not None
    assert len(twilio.messages) == 1


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("phone", "consent", "opted_out", "reason"),
    [
        (None, True, False, "no phone number"),
        ("+15550100001", False, False, "no SMS consent"),
        ("+15550100001", True, True, "opted out"),
    ],
)
async def test_no_consent_or_opt_out_is_never_sent_even_when_urgent(
    pool: asyncpg.Pool,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    phone: str | None,
    consent: bool,
    opted_out: bool,
    reason: str,
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", phone, consent=consent)
        if opted_out:
            await sms_store.opt_out(conn, ["p1"])
    item = await enqueue(pool, "k", patient_payload("p1", None, severity="CRITICAL", urgent=True))

    await worker(pool, channel, hooks).drain_once()

    row = await outbox_row(pool, item)
    assert (row["last_error"], row["delivered_at"]) == (reason, None)
    assert row["failed_at"] is not None
    assert twilio.messages == []
    assert twilio.rejected == []
    assert await sms_rows(pool, patient_id="p1") == []


async def test_21610_marks_the_patient_opted_out_without_retry(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
    twilio.unsubscribe("+15550100001")
    first = await enqueue(pool, "k1", patient_payload("p1", None, severity="HIGH", urgent=True))
    w = worker(pool, channel, hooks)

    await w.drain_once()

    row = await outbox_row(pool, first)
    assert row["failed_at"] is not None
    assert row["attempts"] == 1
    assert "21610" in row["last_error"]
    async with pool.acquire() as conn:
        p = await sms_store.patient(conn, "p1")
    assert p is not None
    assert p.opted_out_at is not None
    [message] = await sms_rows(pool, patient_id="p1")
    assert (message["status"], message["error_code"], message["twilio_sid"]) == (
        "failed",
        21610,
        None,
    )

    second = await enqueue(pool, "k2", patient_payload("p1", None, severity="HIGH", urgent=True))
    await w.drain_once()
    assert (await outbox_row(pool, second))["last_error"] == "opted out"
    assert len(twilio.rejected) == 1  # Twilio was not asked again


async def test_21610_in_a_status_callback_marks_the_patient_opted_out(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
    await enqueue(pool, "k1", patient_payload("p1", None, severity="HIGH", urgent=True))
    await worker(pool, channel, hooks).drain_once()
    [sent] = twilio.messages

    await twilio.send_status(sent.sid, "failed", error_code=21610)

    async with pool.acquire() as conn:
        p = await sms_store.patient(conn, "p1")
    assert p is not None
    assert p.opted_out_at is not None


async def test_nurse_escalation_goes_to_the_staff_phone_without_patient_identity(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    clock = Clock(datetime.now(UTC) + timedelta(minutes=1))
    async with pool.acquire() as conn:
        await add_patient(conn, "pat-42", "+15550100042", quiet=QUIET)
        await add_staff(conn, "nurse-1", "+15550199991")
        alert_id = await add_alert(conn, "pat-42", opened_at=clock.now - timedelta(minutes=17))
        acked = await add_alert(conn, "pat-42", "spo2.below_88", state="acknowledged")
    payload = {
        "recipient": "staff",
        "staff_id": "nurse-1",
        "patient_id": "pat-42",
        "alert_id": alert_id,
        "template": "escalation",
        "tier": 1,
        "severity": "CRITICAL",
        "rule_id": "bp.hypertensive_crisis",
        "title": "Hypertensive crisis",
        "urgent": True,
    }
    sent_item = await enqueue(pool, "esc", payload)
    moot_item = await enqueue(pool, "moot", {**payload, "alert_id": acked})

    await worker(pool, channel, hooks, clock).drain_once()

    [sent] = twilio.messages
    assert sent.to == "+15550199991"
    assert sent.body == (
        f"RPM escalation, tier 1: alert {alert_id} (CRITICAL) Hypertensive crisis, patient "
        f"pat-42, unacknowledged for 17 min. https://rpm.example.org/?alert={alert_id}"
    )
    assert "Name-of-pat-42" not in sent.body
    assert "+15550100042" not in sent.body
    assert (await outbox_row(pool, sent_item))["delivered_at"] is not None
    moot = await outbox_row(pool, moot_item)
    assert moot["last_error"] == "alert acknowledged before the escalation was sent"
    [message] = await sms_rows(pool, alert_id=alert_id)
    assert (message["staff_id"], message["patient_id"]) == ("nurse-1", "pat-42")


async def test_patient_language_and_time_zone_shape_the_text(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", language="es-MX", timezone="Europe/Madrid")
    advice = {"en": "Rest and measure again.", "es": "Descanse y vuelva a medir."}
    await enqueue(
        pool, "k", patient_payload("p1", None, severity="CRITICAL", urgent=True, advice=advice)
    )

    await worker(pool, channel, hooks).drain_once()

    [sent] = twilio.messages
    assert sent.body is not None
    assert sent.body.startswith("URGENTE, Home Health Monitoring (")
    assert "Descanse y vuelva a medir." in sent.body
    assert "911" in sent.body


async def test_legacy_and_bad_payloads_do_not_stop_the_stream(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", quiet=QUIET)
    bad = await enqueue(pool, "bad", {"recipient": "patient", "template": "alert"})
    legacy = await enqueue(pool, "legacy", {"patient_id": "p1", "alert_id": None, "body": "Hi"})

    await worker(pool, channel, hooks).drain_once()

    assert (await outbox_row(pool, bad))["last_error"] == "patient message without patient_id"
    assert (await outbox_row(pool, legacy))["delivered_at"] is not None
    assert [m.body for m in twilio.messages] == ["Hi"]


async def test_twilio_down_for_a_minute_delays_messages_and_loses_none(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    """Twilio answers 503 to every create for a while; afterwards each message is delivered
    exactly once.

    Scaled down 20x in time: in production a 60 s outage meets backoff of 2 s doubling to a
    300 s cap over 12 attempts (at least 14 min of retries); here the outage is 3 s of real
    time against backoff of 0.1 s doubling to a 1 s cap over 12 attempts (at least 4.5 s).
    """
    phones = {f"p{i}": f"+1555010010{i}" for i in range(4)}
    async with pool.acquire() as conn:
        for pid, phone in phones.items():
            await add_patient(conn, pid, phone, quiet=(time(0), time(0)))
    items = []
    for pid in phones:
        items.append(await enqueue(pool, f"{pid}-calm", patient_payload(pid, None)))
        items.append(
            await enqueue(
                pool, f"{pid}-urgent", patient_payload(pid, None, severity="HIGH", urgent=True)
            )
        )
    outage_s = 3.0
    twilio.fail_for(outage_s, status=503)
    loop = asyncio.get_running_loop()
    outage_ends = loop.time() + outage_s
    w = worker(
        pool,
        channel,
        hooks,
        outbox_backoff_base_s=0.1,
        outbox_backoff_cap_s=1.0,
        outbox_max_attempts=12,
        daily_cap=5,
    )
    task = asyncio.create_task(w.run())
    try:
        await twilio.wait_for(len(items), timeout=30)
        assert loop.time() >= outage_ends  # nothing got through during the outage
        await asyncio.sleep(1.0)  # room for any duplicate to show up
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert len(twilio.messages) == len(items)
    assert Counter(m.to for m in twilio.messages) == dict.fromkeys(phones.values(), 2)
    assert len({(m.to, m.body) for m in twilio.messages}) == len(items)
    assert len(twilio.rejected) >= len(items)
    assert {status for status, _ in twilio.rejected} == {503}
    rows = [await outbox_row(pool, i) for i in items]
    assert all(r["delivered_at"] is not None and r["failed_at"] is None for r in rows)
    assert all(r["attempts"] >= 2 for r in rows)
    logged = await sms_rows(pool)
    assert sorted(m["outbox_id"] for m in logged) == sorted(items)
    assert {m["twilio_sid"] for m in logged} == {m.sid for m in twilio.messages}


async def test_network_errors_are_retried(
    pool: asyncpg.Pool, channel: TwilioSms, hooks: str
) -> None:
    """The fake Twilio is not listening at first: connection refused, then it comes up."""
    port = free_port()
    contract = TWILIO_CONTRACT if TWILIO_CONTRACT.is_file() else None
    sink = TwilioSink(
        account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, port=port, contract_path=contract
    )
    sms = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number=SENDER,
        base_url=f"http://127.0.0.1:{port}",
    )
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
    item = await enqueue(pool, "k", patient_payload("p1", None, severity="HIGH", urgent=True))
    w = worker(pool, sms, hooks, outbox_backoff_base_s=0.1, outbox_backoff_cap_s=0.2)
    try:
        await w.drain_once()
        row = await outbox_row(pool, item)
        assert row["last_error"].startswith("network")
        assert row["delivered_at"] is None

        await sink.start()
        await eventually(lambda: w.drain_once(), within=5)
        assert len(sink.messages) == 1
        assert (await outbox_row(pool, item))["delivered_at"] is not None
    finally:
        await sink.stop()
        await sms.close()


async def test_logs_carry_ids_only(
    pool: asyncpg.Pool,
    twilio: TwilioSink,
    channel: TwilioSms,
    hooks: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001")
        await add_patient(conn, "p2", "+15550100002", consent=False)
    await enqueue(pool, "k1", patient_payload("p1", None, severity="HIGH", urgent=True))
    await enqueue(pool, "k2", patient_payload("p2", None, severity="HIGH", urgent=True))
    twilio.fail_next(1, status=429)
    w = worker(pool, channel, hooks, outbox_backoff_base_s=0.01, outbox_backoff_cap_s=0.02)

    for _ in range(100):  # the 429 is retried after a few milliseconds
        await w.drain_once()
        if twilio.messages:
            break
        await asyncio.sleep(0.02)
    [sent] = twilio.messages
    await twilio.send_status(sent.sid, "delivered")

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "patient=p1" in text
    assert "patient=p2" in text
    assert sent.sid in text
    assert sent.body is not None
    for secret in ("+15550100001", "+15550100002", sent.body, "Name-of-p1", TWILIO_TOKEN):
        assert secret not in text
    assert json.dumps(sent.body) not in text


def test_config_from_settings_points_twilio_at_the_public_url() -> None:
    local = DeliveryConfig.from_settings(SmsSettings(), ApiSettings(port=9000))
    proxied = DeliveryConfig.from_settings(
        SmsSettings(daily_cap=5), ApiSettings(public_base_url="https://rpm.example.org/")
    )

    assert local.status_callback_url == "http://127.0.0.1:9000/twilio/status"
    assert local.dashboard_url == "http://127.0.0.1:9000/dashboard/"
    assert proxied.status_callback_url == "https://rpm.example.org/twilio/status"
    assert proxied.dashboard_url == "https://rpm.example.org/dashboard/"
    assert (proxied.daily_cap, local.daily_cap) == (5, 3)


async def test_critical_goes_first_and_never_expires_in_twilios_queue(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    # Queued in the worst order: a campaign, a medium, a high, then the critical one.
    async with pool.acquire() as conn:
        await add_patient(conn, "p1", "+15550100001", timezone="America/New_York")
        ids = {}
        for severity in ("MEDIUM", "HIGH", "CRITICAL"):
            ids[severity] = await add_alert(
                conn, "p1", f"rule.{severity.lower()}", severity=severity
            )
    await enqueue(pool, "campaign", {**patient_payload("p1", None), "template": "campaign"})
    for severity in ("MEDIUM", "HIGH", "CRITICAL"):
        urgent = severity != "MEDIUM"
        payload = patient_payload("p1", ids[severity], severity=severity, urgent=urgent)
        await enqueue(pool, severity, payload)
    async with pool.acquire() as conn:
        claimed = await outbox_store.claim_due(conn, "sms", 10, timedelta(minutes=2))
        await conn.execute("UPDATE outbox SET next_attempt_at = now() - interval '1 second'")
    order = [item.payload.get("severity") for item in claimed]
    kinds = [item.payload["template"] for item in claimed]
    assert order[:3] == ["CRITICAL", "HIGH", "MEDIUM"]
    assert kinds[3] == "campaign"

    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))
    await worker(pool, channel, hooks, clock, daily_cap=10).drain_once()
    first, second = twilio.messages[:2]
    assert first.body is not None
    assert "URGENT" in first.body
    assert first.validity_period is None  # Twilio keeps trying; it is never dropped
    assert second.validity_period == 900  # a high alert's message may expire


async def test_consent_given_at_enrolment_is_confirmed_by_one_text(
    pool: asyncpg.Pool, twilio: TwilioSink, channel: TwilioSms, hooks: str
) -> None:
    app = api_app(pool)
    app.include_router(registry_api.router)
    headers = await staff_headers(pool)
    patient = {
        "id": "p-consent",
        "display_name": "Ada Example",
        "phone": "+15550100077",
        "timezone": "America/New_York",
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rpm.test", headers=headers
    ) as http:
        for body in (
            {**patient, "sms_consent": False},  # enrolled first without consent: no text
            {**patient, "sms_consent": True},  # consent given: one text
            {**patient, "sms_consent": True},  # the same request again: nothing more
        ):
            assert (await http.post("/api/patients", json=body)).status_code == 201
    clock = Clock(local_time_after(datetime.now(UTC), NEW_YORK, time(12)))
    assert await worker(pool, channel, hooks, clock).drain_once() == 1
    [sent] = twilio.messages
    assert sent.to == "+15550100077"
    assert sent.body == templates.consent_confirmation("en", service="Home Health Monitoring")
    assert "STOP" in sent.body
