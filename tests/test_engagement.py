"""Segments, campaigns and the interaction ledger against a real database, a real SMS worker
and the local Twilio stand-in: readings go in through the ingest pipeline, segments and
campaigns are stored as versions, the planner writes outbox rows, the worker sends them
through the same gate as alert messages.

The clock is pinned (a Wednesday in June 2026); nothing here reads the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.sms import TwilioSms
from rpm.domain import RawMessage
from rpm.engagement import campaigns, segments
from rpm.pipeline import IngestPipeline
from rpm.settings import ApiSettings, SmsSettings
from rpm.storage import campaigns as campaign_store
from rpm.storage import engagement as store
from rpm.storage import registry, rule_programs
from rpm.storage import segments as segment_store
from rpm.validation import ClockPolicy
from rpm.workers.campaigns import CampaignPlanner
from rpm.workers.sms_config import DeliveryConfig
from rpm.workers.sms_outbox import SmsOutboxWorker
from simulators.twilio_sink import TwilioSink
from tests.conftest import TWILIO_SID, TWILIO_TOKEN

# Wednesday 10 June 2026, 15:00 UTC: 11:00 in New York, 17:00 in Madrid.
NOW = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)
NY = "America/New_York"


def reading(device: str, metric: str, at: datetime, **values: float) -> RawMessage:
    body = json.dumps({"metric": metric, "measured_at": at.isoformat(), "values": values})
    return RawMessage("mqtt", "canonical", device, body.encode(), at, f"rpm/v1/devices/{device}")


def bp_at(device: str, at: datetime, sys_: int = 128, dia: int = 80) -> RawMessage:
    return reading(device, "blood_pressure", at, systolic=sys_, diastolic=dia)


async def add_patient(
    conn: asyncpg.Connection,
    patient_id: str,
    *,
    programs: tuple[str, ...] = ("hypertension",),
    timezone: str = NY,
    language: str = "en",
    consent: bool = True,
    phone: str | None = "+15550100001",
    device_kind: str = "bp_cuff",
) -> str:
    await registry.upsert_patient(
        conn,
        patient_id=patient_id,
        display_name=f"Patient {patient_id}",
        phone=phone,
        sms_consent=consent,
        programs=list(programs),
        timezone=timezone,
        language=language,
    )
    await conn.execute(
        "UPDATE patients SET created_at = $2 WHERE id = $1", patient_id, NOW - timedelta(days=60)
    )
    device = f"{patient_id}-dev"
    await registry.enroll_device(
        conn,
        device_id=device,
        kind=device_kind,
        patient_id=patient_id,
        since=NOW - timedelta(days=60),
    )
    return device


async def ingest(pool: asyncpg.Pool, messages: list[RawMessage], now: datetime = NOW) -> None:
    pipeline = IngestPipeline(pool, ClockPolicy(), now=lambda: now, rules_refresh_s=0)
    await pipeline.process(messages)


@pytest.fixture
async def programs(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)


@pytest.fixture
async def channel(twilio: TwilioSink) -> AsyncIterator[TwilioSms]:
    sms = TwilioSms(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        from_number="+15550009999",
        base_url=twilio.base_url,
        validity_period_s=900,
    )
    try:
        yield sms
    finally:
        await sms.close()


def sms_worker(pool: asyncpg.Pool, channel: TwilioSms, at: datetime) -> SmsOutboxWorker:
    config = DeliveryConfig.from_settings(
        SmsSettings(outbox_poll_interval_s=0.05, daily_cap=3),
        ApiSettings(dashboard_url="https://rpm.example.org"),
    )
    return SmsOutboxWorker(pool, channel, config, clock=lambda: at)


async def publish_segment(pool: asyncpg.Pool, name: str, document: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        version, _ = await segment_store.publish_segment(
            conn, name, segments.parse(document), "staff:admin", None
        )
    return version


async def publish_campaign(
    pool: asyncpg.Pool, name: str, document: dict[str, Any], live: bool = True
) -> None:
    async with pool.acquire() as conn:
        await campaign_store.publish_campaign(
            conn, name, campaigns.parse(document), live, "staff:admin", None
        )


async def outbox_for(pool: asyncpg.Pool, campaign: str) -> dict[str, dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE payload->>'campaign' = $1", campaign
        )
    return {r["payload"]["patient_id"]: r["payload"] for r in rows}


# --- days with readings ------------------------------------------------------------------


async def test_days_with_readings_are_local_days_and_count_each_reading_once(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        ny = await add_patient(conn, "p-ny")
        madrid = await add_patient(conn, "p-mad", timezone="Europe/Madrid")
    early = datetime(2026, 6, 10, 2, 30, tzinfo=UTC)  # 22:30 on the 9th in New York
    batch = [bp_at(ny, early), bp_at(madrid, early), bp_at(ny, early + timedelta(hours=12))]
    await ingest(pool, batch)
    await ingest(pool, batch)  # redelivered: duplicates are not counted again
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT patient_id, day::text, readings, metrics FROM patient_days ORDER BY 1, 2"
        )
    assert [tuple(r) for r in rows] == [
        ("p-mad", "2026-06-10", 1, ["blood_pressure"]),
        ("p-ny", "2026-06-09", 1, ["blood_pressure"]),
        ("p-ny", "2026-06-10", 1, ["blood_pressure"]),
    ]


# --- segments ----------------------------------------------------------------------------

LOW_ADHERENCE = {
    "description": "hypertension patients who measured on fewer than 4 of the last 7 days",
    "where": {
        "all": [
            {"fact": "program", "op": "includes", "value": "hypertension"},
            {"fact": "days_with_readings_7d", "op": "<", "value": 4},
        ]
    },
}


async def test_segments_are_versioned_sized_and_listed_with_their_members(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        daily = await add_patient(conn, "p-daily")
        twice = await add_patient(conn, "p-twice", language="es")
        await add_patient(conn, "p-never")
        await add_patient(conn, "p-copd", programs=("copd",))
    await ingest(pool, [bp_at(daily, NOW - timedelta(days=d, hours=1)) for d in range(7)])
    await ingest(pool, [bp_at(twice, NOW - timedelta(days=d, hours=1)) for d in (1, 3)])

    assert await publish_segment(pool, "bp-low", LOW_ADHERENCE) == 1
    assert await publish_segment(pool, "bp-low", LOW_ADHERENCE) == 1  # unchanged: no version
    spanish = {"where": {"fact": "language", "op": "in", "value": ["es", "pt"]}}
    await publish_segment(pool, "spanish", spanish)

    async with pool.acquire() as conn:
        current = await segment_store.current_segments(conn)
        sizes = await segment_store.segment_sizes(conn, NOW, current, None)
        members = await segment_store.segment_members(conn, NOW, current[0].spec, None)
    assert sizes == {"bp-low": 2, "spanish": 1}
    assert [m["patient_id"] for m in members] == ["p-never", "p-twice"]
    twice_facts = members[1]
    assert twice_facts["days_with_readings_7d"] == 2
    assert twice_facts["days_since_last_reading"] == 1
    assert twice_facts["open_alert_severity"] == "none"
    assert members[0]["days_since_last_reading"] is None  # never measured

    stricter = {
        **LOW_ADHERENCE,
        "where": {
            "all": [
                *LOW_ADHERENCE["where"]["all"][:1],
                {"fact": "days_with_readings_7d", "op": "<", "value": 2},
            ]
        },
    }
    assert await publish_segment(pool, "bp-low", stricter) == 2
    async with pool.acquire() as conn:
        history = await segment_store.segment_history(conn, "bp-low")
        assert [h["version"] for h in history] == [2, 1]
        assert await segment_store.retire_segment(conn, "bp-low", "staff:admin", "merged") == 3
        assert [s.name for s in await segment_store.current_segments(conn)] == ["spanish"]


async def test_segment_facts_cover_alerts_age_and_consent(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        device = await add_patient(conn, "p-crisis")
        await add_patient(conn, "p-quiet", consent=False)
        # 75 tomorrow: 74 today.
        await conn.execute("UPDATE patients SET birth_date = '1951-06-11' WHERE id = 'p-crisis'")
    await ingest(pool, [bp_at(device, NOW - timedelta(minutes=30), 192, 124)])
    await publish_segment(
        pool,
        "in-crisis",
        {
            "where": {
                "all": [
                    {"fact": "open_alert_severity", "op": ">=", "value": "high"},
                    {"fact": "age_band", "op": "=", "value": "70-74"},
                    {"fact": "age", "op": "=", "value": 74},
                ]
            }
        },
    )
    await publish_segment(
        pool, "no-consent", {"where": {"not": {"fact": "sms_consent", "op": "=", "value": True}}}
    )
    async with pool.acquire() as conn:
        sizes = await segment_store.segment_sizes(
            conn, NOW, await segment_store.current_segments(conn), None
        )
        [member] = await segment_store.segment_members(
            conn,
            NOW,
            segments.parse({"where": {"fact": "open_alerts", "op": ">", "value": 0}}),
            None,
        )
    assert sizes == {"in-crisis": 1, "no-consent": 1}
    assert member["patient_id"] == "p-crisis"
    assert member["open_alert_severity"] == "critical"


# --- campaigns ---------------------------------------------------------------------------

NUDGE = {
    "segment": "bp-patients",
    "trigger": {"kind": "no_reading_by", "local_time": "10:00", "metric": "blood_pressure"},
    "messages": {
        "en": "No blood pressure yet today. You measured on {days_measured_7d} of the last "
        "7 days (average {bp_avg_7d}). Reply STOP to opt out.",
        "es": "Hoy no hay presión todavía. Midió {days_measured_7d} de los últimos 7 días.",
    },
}
BP_PATIENTS = {"where": {"fact": "program", "op": "includes", "value": "hypertension"}}


async def test_a_campaign_is_dry_run_planned_once_and_sent_through_the_patients_gate(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        today = await add_patient(conn, "p-today")
        late = await add_patient(conn, "p-late")
        spanish = await add_patient(conn, "p-es", language="es", phone="+15550100002")
        await add_patient(conn, "p-noconsent", consent=False)
        await add_patient(conn, "p-nophone", phone=None)
        crisis = await add_patient(conn, "p-crisis", phone="+15550100003")
        await add_patient(conn, "p-optout", phone="+15550100004")
        await conn.execute("UPDATE patients SET sms_opted_out_at = $1 WHERE id = 'p-optout'", NOW)
    history = [bp_at(late, NOW - timedelta(days=d), 130 + d, 80) for d in (1, 2, 3)]
    history += [bp_at(spanish, NOW - timedelta(days=2))]
    history += [bp_at(today, NOW - timedelta(hours=2))]
    await ingest(pool, history)
    await ingest(pool, [bp_at(crisis, NOW - timedelta(hours=30), 192, 124)])
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    await publish_campaign(pool, "bp-nudge", NUDGE)

    async with pool.acquire() as conn:
        version = await campaign_store.campaign(conn, "bp-nudge")
        segment = await segment_store.segment(conn, "bp-patients")
        assert version is not None
        assert segment is not None
        # 09:30 in New York: before the campaign's 10:00, nobody yet.
        early = NOW - timedelta(minutes=90)
        _, counts = await campaign_store.dry_run(conn, version, segment.spec, early, daily_cap=3)
        assert counts == {}
        rows, counts = await campaign_store.dry_run(conn, version, segment.spec, NOW, daily_cap=3)
    assert counts == {
        "send": 2,
        "no SMS consent": 1,
        "no phone number": 1,
        "open high or critical alert": 1,
        "opted out": 1,
    }
    to_send = {r["patient_id"]: r for r in rows if r["excluded"] is None}
    assert set(to_send) == {"p-late", "p-es"}
    assert to_send["p-late"]["occurrence"] == "2026-06-10"
    assert to_send["p-late"]["context"] == {"bp_avg_7d": "132/80", "days_measured_7d": 3}

    planner = CampaignPlanner(pool, daily_cap=3)
    first = await planner.tick(NOW)
    again = await planner.tick(NOW + timedelta(minutes=1))
    assert first.planned == {"bp-nudge": 2}
    assert again.planned == {"bp-nudge": 0}  # one message per patient and local day

    worker = sms_worker(pool, channel, NOW)
    assert await worker.drain_once() == 3  # the two nudges, and the crisis alert's SMS
    by_phone = {m.to: m.body for m in twilio.messages}
    assert "911" in by_phone["+15550100003"]  # the alert's urgent message, no nudge
    assert by_phone["+15550100001"] == (
        "No blood pressure yet today. You measured on 3 of the last 7 days (average 132/80). "
        "Reply STOP to opt out."
    )
    assert by_phone["+15550100002"] == (
        "Hoy no hay presión todavía. Midió 1 de los últimos 7 días."
    )
    async with pool.acquire() as conn:
        ledger = await conn.fetch(
            "SELECT patient_id, kind, channel, direction, campaign FROM interactions ORDER BY 1"
        )
        sends = await conn.fetch("SELECT patient_id, outbox_id FROM campaign_sends ORDER BY 1")
    assert [tuple(r) for r in ledger] == [
        ("p-crisis", "alert", "sms", "outbound", None),
        ("p-es", "campaign", "sms", "outbound", "bp-nudge"),
        ("p-late", "campaign", "sms", "outbound", "bp-nudge"),
    ]
    assert [r["patient_id"] for r in sends] == ["p-es", "p-late"]
    assert all(r["outbox_id"] is not None for r in sends)


async def test_the_daily_cap_counts_every_message_for_campaigns_and_only_alerts_for_alerts(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p-busy")
        for n in range(3):  # three alert messages already sent today (Twilio took them)
            await conn.execute(
                """WITH o AS (INSERT INTO outbox (channel, dedupe_key, payload, delivered_at)
                              VALUES ('sms', $1, $2, $3) RETURNING id)
                   INSERT INTO sms_messages (direction, outbox_id, patient_id, twilio_sid,
                                             status, body, created_at)
                   SELECT 'outbound', o.id, 'p-busy', $4, 'delivered', 'x', $3 FROM o""",
                f"alert-{n}",
                {
                    "recipient": "patient",
                    "template": "alert",
                    "patient_id": "p-busy",
                    "severity": "critical",
                    "urgent": True,
                },
                NOW - timedelta(hours=n + 1),
                f"SM{n:032d}",
            )
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    await publish_campaign(pool, "bp-nudge", NUDGE)
    assert (await CampaignPlanner(pool, daily_cap=3).tick(NOW)).planned == {"bp-nudge": 1}

    worker = sms_worker(pool, channel, NOW)
    assert await worker.drain_once() == 1
    assert twilio.messages == []
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT failed_at, last_error FROM outbox WHERE payload->>'campaign' = 'bp-nudge'"
        )
    assert row is not None
    assert row["failed_at"] is not None
    assert row["last_error"] == "daily cap"


async def test_campaign_messages_wait_for_the_end_of_quiet_hours(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p-night", timezone="Asia/Tokyo")  # 00:00 in Tokyo at NOW
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    weekly = {
        "segment": "bp-patients",
        "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "00:00"},
        "messages": {"en": "Your week: {days_measured_7d} days measured."},
    }
    await publish_campaign(pool, "weekly", weekly)
    # 00:00 Thursday in Tokyo is not Wednesday: nothing; 23:00 Wednesday there is.
    assert (await CampaignPlanner(pool, 3).tick(NOW)).planned == {"weekly": 0}
    wednesday_night = NOW - timedelta(hours=1)
    assert (await CampaignPlanner(pool, 3).tick(wednesday_night)).planned == {"weekly": 1}
    payload = (await outbox_for(pool, "weekly"))["p-night"]
    assert payload["occurrence"] == "2026-W24"

    assert await sms_worker(pool, channel, wednesday_night).drain_once() == 1
    assert twilio.messages == []  # 23:00 in Tokyo: quiet hours (21:00-08:00)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT next_attempt_at, last_error FROM outbox WHERE payload->>'campaign' = 'weekly'"
        )
    assert row is not None
    assert row["last_error"] == "quiet hours"
    assert row["next_attempt_at"] == datetime(2026, 6, 10, 23, 0, tzinfo=UTC)  # 08:00 Tokyo


async def test_each_trigger_picks_the_patients_it_describes(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        first = await add_patient(conn, "p-first")
        streak = await add_patient(conn, "p-streak")
        gap = await add_patient(conn, "p-gap")
        resolved = await add_patient(conn, "p-resolved")
        rising = await add_patient(
            conn, "p-rising", programs=("heart_failure",), device_kind="scale"
        )
        flat = await add_patient(conn, "p-flat", programs=("heart_failure",), device_kind="scale")
    await ingest(pool, [bp_at(first, NOW - timedelta(hours=1))])
    await ingest(pool, [bp_at(streak, NOW - timedelta(days=d, hours=1)) for d in range(5)])
    await ingest(pool, [bp_at(gap, NOW - timedelta(days=4))])
    await ingest(pool, [bp_at(resolved, NOW - timedelta(hours=30), 192, 124)])
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = $1 "
            "WHERE patient_id = 'p-resolved'",
            NOW - timedelta(hours=2),
        )
    for kg, days_ago in ((80.0, 3), (80.3, 2), (80.6, 1), (80.9, 0)):
        at = NOW - timedelta(days=days_ago, hours=1)
        await ingest(pool, [reading(rising, "weight", at, weight=kg)])
        await ingest(pool, [reading(flat, "weight", at, weight=80.0 + (days_ago % 2) * 0.5)])
    await publish_segment(pool, "all", {"where": {"fact": "open_alerts", "op": ">=", "value": 0}})

    def campaign(trigger: dict[str, Any]) -> dict[str, Any]:
        return {"segment": "all", "trigger": trigger, "messages": {"en": "hello"}}

    expected = {
        "first": ({"kind": "first_reading"}, {"p-first"}),
        "streak": ({"kind": "streak", "days": 5}, {"p-streak"}),
        "gap": ({"kind": "missed_days", "days": 2}, {"p-gap"}),
        "resolved": ({"kind": "alert_resolved"}, {"p-resolved"}),
        "rising": ({"kind": "weight_rising", "days": 3, "min_gain_kg": 0.8}, {"p-rising"}),
    }
    for name, (trigger, _) in expected.items():
        await publish_campaign(pool, name, campaign(trigger))
    result = await CampaignPlanner(pool, daily_cap=10).tick(NOW)
    assert result.planned == {name: len(who) for name, (_, who) in expected.items()}
    for name, (_, who) in expected.items():
        assert set(await outbox_for(pool, name)) == who, name
    gap_payload = (await outbox_for(pool, "gap"))["p-gap"]
    assert gap_payload["occurrence"] == "gap-after:2026-06-06"
    # The next day the gap is the same gap, the streak is in its cooldown: nothing new.
    again = await CampaignPlanner(pool, daily_cap=10).tick(NOW + timedelta(days=1))
    assert again.planned["gap"] == 0
    assert again.planned["streak"] == 0
    del flat


async def test_the_figures_from_readings_are_each_patients_own_last_7_days(
    pool: asyncpg.Pool, programs: None
) -> None:
    """``bp_avg_7d`` and ``weight_change_7d``, read for all the patients a pass picks at once,
    are each patient's own over (now - 7 days, now]: in the messages planned and, for the
    excluded too, in the dry run."""
    kinds = {"device_kind": "scale"}  # hypertension only: no weight rule to open an alert
    async with pool.acquire() as conn:
        both = await add_patient(conn, "p-both", **kinds)  # type: ignore[arg-type]
        one = await add_patient(conn, "p-one", **kinds)  # type: ignore[arg-type]
        quiet = await add_patient(conn, "p-quiet", consent=False, **kinds)  # type: ignore[arg-type]
        await add_patient(conn, "p-none", **kinds)  # type: ignore[arg-type]
    week = [NOW - timedelta(days=7, minutes=-1), NOW - timedelta(days=3), NOW]
    await ingest(
        pool,
        [reading(both, "weight", NOW - timedelta(days=7), weight=70.0)]  # just outside
        + [
            reading(both, "weight", at, weight=kg)
            for at, kg in zip(week, (80.0, 79.0, 81.2), strict=True)
        ]
        + [
            bp_at(both, at, s, d)
            for at, s, d in zip(week, (120, 131, 134), (80, 81, 83), strict=True)
        ]
        + [reading(one, "weight", NOW - timedelta(days=1), weight=90.0)]
        + [bp_at(one, NOW - timedelta(days=8), 126, 79)]  # outside the 7 days
        + [reading(quiet, "weight", at, weight=kg) for at, kg in ((week[0], 60.0), (NOW, 59.5))]
        + [bp_at(quiet, NOW - timedelta(days=2), 117, 76)],
    )
    await publish_segment(pool, "both", {"where": {"fact": "open_alerts", "op": ">=", "value": 0}})
    text = "BP {bp_avg_7d}, weight {weight_change_7d}"
    await publish_campaign(
        pool,
        "figures",
        {
            "segment": "both",
            "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "00:00"},
            "messages": {"en": text},
        },
    )
    # The sign next to the digits, as rpm.engagement.campaigns.PLACEHOLDERS shows it.
    expected = {
        "p-both": {"bp_avg_7d": "128/81", "weight_change_7d": "+1.2"},
        "p-one": {"bp_avg_7d": None, "weight_change_7d": None},  # one weight, no recent BP
        "p-quiet": {"bp_avg_7d": "117/76", "weight_change_7d": "-0.5"},
        "p-none": {"bp_avg_7d": None, "weight_change_7d": None},
    }
    async with pool.acquire() as conn:
        version = await campaign_store.campaign(conn, "figures")
        segment = await segment_store.segment(conn, "both")
        assert version is not None
        assert segment is not None
        rows, counts = await campaign_store.dry_run(conn, version, segment.spec, NOW, daily_cap=3)
    assert counts == {"send": 3, "no SMS consent": 1}
    assert {r["patient_id"]: r["context"] for r in rows} == expected
    assert (await CampaignPlanner(pool, daily_cap=3).tick(NOW)).planned == {"figures": 3}
    planned = await outbox_for(pool, "figures")
    assert {p: payload["context"] for p, payload in planned.items()} == {
        p: expected[p] for p in ("p-both", "p-one", "p-none")
    }


async def test_a_paused_campaign_plans_nothing_and_a_missing_segment_is_reported(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1")
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    await publish_campaign(pool, "paused", NUDGE, live=False)
    await publish_campaign(pool, "orphan", {**NUDGE, "segment": "nobody-made-this"})
    result = await CampaignPlanner(pool, daily_cap=3).tick(NOW)
    assert result.planned == {}
    assert result.skipped == {"orphan": "segment nobody-made-this does not exist"}


async def test_engagement_figures_per_segment(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        a = await add_patient(conn, "p-a")
        await add_patient(conn, "p-b", programs=("copd",))
    await ingest(pool, [bp_at(a, NOW - timedelta(days=d, hours=1)) for d in range(0, 28, 2)])
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    async with pool.acquire() as conn:
        await store.record(
            conn,
            [
                store.Interaction(
                    "p-a",
                    NOW - timedelta(days=1),
                    "campaign",
                    "sms",
                    "outbound",
                    "sms:SM1",
                    "bp-nudge",
                ),
                store.Interaction(
                    "p-a", NOW - timedelta(days=1), "reply", "sms", "inbound", "sms:SM2"
                ),
                store.Interaction(
                    "p-a", NOW - timedelta(days=1), "reply", "sms", "inbound", "sms:SM2"
                ),  # recorded twice, counted once
            ],
        )
        figures = await store.engagement(
            conn, NOW, await segment_store.current_segments(conn), None, days=28
        )
    everyone, bp = figures
    assert (everyone["segment"], everyone["patients"]) == ("*", 2)
    assert (bp["segment"], bp["patients"]) == ("bp-patients", 1)
    assert bp["interactions"] == 14 + 2
    # 16 touches in 28 days: 16 / (28 / 365.25) per patient-year.
    assert bp["interactions_per_patient_year"] == round(16 / (28 / 365.25), 1)
    assert bp["reply_rate"] == 1.0
    assert bp["reading_days_per_patient_week"] == [3.0, 4.0, 3.0, 4.0]


async def test_a_message_held_back_past_its_day_is_dropped_as_expired(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p-tokyo", timezone="Asia/Tokyo")
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    late_nudge = {**NUDGE, "trigger": {"kind": "no_reading_by", "local_time": "22:00"}}
    await publish_campaign(pool, "late", late_nudge)
    ten_pm_tokyo = datetime(2026, 6, 10, 13, 0, tzinfo=UTC)
    assert (await CampaignPlanner(pool, 3).tick(ten_pm_tokyo)).planned == {"late": 1}
    payload = (await outbox_for(pool, "late"))["p-tokyo"]
    assert datetime.fromisoformat(payload["expires_at"]) == datetime(2026, 6, 10, 15, 0, tzinfo=UTC)

    await sms_worker(pool, channel, ten_pm_tokyo).drain_once()  # quiet hours: until 08:00
    morning = datetime(2026, 6, 10, 23, 0, tzinfo=UTC)
    assert await sms_worker(pool, channel, morning).drain_once() == 1
    assert twilio.messages == []
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT failed_at, last_error FROM outbox")
    assert row is not None
    assert (row["failed_at"] is not None, row["last_error"]) == (True, "expired")


async def test_an_urgent_alert_message_goes_before_a_backlog_of_campaign_messages(
    pool: asyncpg.Pool, programs: None, twilio: TwilioSink, channel: TwilioSms
) -> None:
    async with pool.acquire() as conn:
        for n in range(8):
            await add_patient(conn, f"p-{n}", phone=f"+1555010020{n}")
        crisis = await add_patient(conn, "p-crisis", phone="+15550100300")
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    await publish_campaign(pool, "bp-nudge", NUDGE)
    assert (await CampaignPlanner(pool, 3).tick(NOW - timedelta(minutes=30))).planned == {
        "bp-nudge": 9
    }
    await ingest(pool, [bp_at(crisis, NOW - timedelta(minutes=5), 192, 124)])  # queued last
    config = DeliveryConfig.from_settings(
        SmsSettings(daily_cap=3), ApiSettings(dashboard_url="https://rpm.example.org")
    )
    worker = SmsOutboxWorker(pool, channel, replace(config, batch=3), clock=lambda: NOW)
    assert await worker.drain_once() == 3
    first = twilio.messages[0]
    assert first.to == "+15550100300"
    assert first.body is not None
    assert "911" in first.body  # the crisis alert's, before the nudges queued earlier


async def test_a_campaign_that_plans_too_slowly_is_skipped_and_the_pass_goes_on(
    pool: asyncpg.Pool, programs: None
) -> None:
    async with pool.acquire() as conn:
        await add_patient(conn, "p1")
    await publish_segment(pool, "bp-patients", BP_PATIENTS)
    await publish_campaign(pool, "bp-nudge", NUDGE)
    await publish_campaign(
        pool,
        "weekly",
        {**NUDGE, "trigger": {"kind": "weekly", "weekday": "wed", "local_time": "09:00"}},
    )
    # Slow by construction, not by the machine: another session holds campaign_sends, which
    # every plan reads and writes, until both campaigns ran out of their 0.2 s.
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE campaign_sends IN ACCESS EXCLUSIVE MODE")
        hurried = CampaignPlanner(pool, daily_cap=3, timeout_s=0.2)
        async with asyncio.timeout(60):  # without the time limit the plans would wait here
            first = await hurried.tick(NOW)
    assert first.planned == {}
    assert first.skipped == {
        "bp-nudge": "planning took longer than 0.2 s",
        "weekly": "planning took longer than 0.2 s",
    }
    assert await outbox_for(pool, "bp-nudge") == {}  # nothing half-planned
    second = await CampaignPlanner(pool, daily_cap=3).tick(NOW)  # the lock was given back
    assert second.ran
    assert second.planned == {"bp-nudge": 1, "weekly": 1}
