"""The incremental planner plans exactly what evaluating everyone at every pass plans.

One scenario, run twice in two fresh databases: two and a half days of hourly passes
(Saturday 31 October to Monday 2 November 2026, across the end of daylight saving time in
New York) in five time zones, with readings through the ingest pipeline, alerts opened and
resolved, patient records edited, a patient enrolled and one moving zone. Once with the
planner incremental after the first pass (no reconciliation, which would hide a miss), once
evaluating everyone every pass.
Every outbox row and ``campaign_sends`` row must be the same, and each event kind of the
table in docs/engagement.md has a patient whose message depends on it. Clocks are pinned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from rpm.local_endpoints import ServiceEndpoints
from rpm.storage import rule_programs
from rpm.storage.pool import create_pool
from rpm.workers.campaigns import CampaignPlanner
from tests.conftest import TEMPLATE_DB, with_database
from tests.test_engagement import add_patient, bp_at, ingest, publish_campaign, publish_segment
from tests.test_engagement import reading as raw_reading

START = datetime(2026, 10, 31, 12, 17, tzinfo=UTC)  # Saturday; passes at :17 past each hour
PASSES = 60
NY, MADRID, TOKYO, LA, KOLKATA = (
    "America/New_York",
    "Europe/Madrid",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Asia/Kolkata",
)
ZONES = (NY, MADRID, TOKYO, LA, KOLKATA)

SEGMENTS: dict[str, dict[str, Any]] = {
    "bp-low": {
        "where": {
            "all": [
                {"fact": "program", "op": "includes", "value": "hypertension"},
                {"fact": "days_with_readings_7d", "op": "<", "value": 5},
            ]
        }
    },
    "settled": {"where": {"fact": "weeks_since_enrolment", "op": ">=", "value": 1}},
    "calm": {"where": {"fact": "news2_severity_7d", "op": "<", "value": "high"}},
    "senior": {"where": {"fact": "age", "op": ">=", "value": 65}},
    "everyone": {"where": {"fact": "open_alerts", "op": ">=", "value": 0}},
    "spanish": {"where": {"fact": "language", "op": "=", "value": "es"}},
    "hf": {"where": {"fact": "program", "op": "includes", "value": "heart_failure"}},
}


def campaign(segment: str, trigger: dict[str, Any], **more: Any) -> dict[str, Any]:
    text = "Hi: {days_measured_7d} days, last {days_since_last}, bp {bp_avg_7d}."
    return {"segment": segment, "trigger": trigger, "messages": {"en": text}, **more}


CAMPAIGNS = {
    "nudge": campaign(
        "bp-low", {"kind": "no_reading_by", "local_time": "11:00", "metric": "blood_pressure"}
    ),
    "gap": campaign("settled", {"kind": "missed_days", "days": 2}),
    "calm-gap": campaign("calm", {"kind": "missed_days", "days": 2}),
    "first": campaign("everyone", {"kind": "first_reading"}),
    "streak": campaign("senior", {"kind": "streak", "days": 2}, cooldown_days=1),
    "resolved": campaign("everyone", {"kind": "alert_resolved"}),
    "rising": campaign("hf", {"kind": "weight_rising", "days": 2, "min_gain_kg": 0.5}),
    "weekly": campaign("spanish", {"kind": "weekly", "weekday": "mon", "local_time": "09:00"}),
}


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


async def alert(
    conn: asyncpg.Connection,
    patient: str,
    rule: str,
    severity: str,
    opened: datetime,
    resolved: datetime | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO alerts (patient_id, rule_id, severity, state, title, explanation,
                               evidence, first_reading_uid, last_reading_uid, opened_at,
                               updated_at, resolved_at)
           VALUES ($1, $2, $3, $4, 't', 'e', '{}', gen_random_uuid(), gen_random_uuid(),
                   $5, $5, $6)""",
        patient,
        rule,
        severity,
        "resolved" if resolved else "open",
        opened,
        resolved,
    )


async def resolve(conn: asyncpg.Connection, patient: str, when: datetime) -> None:
    await conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = $2, updated_at = $2 "
        "WHERE patient_id = $1 AND state <> 'resolved'",
        patient,
        when,
    )


Step = Callable[[asyncpg.Pool], Awaitable[None]]


def sql(statement: str, *args: Any) -> Step:
    async def run(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await conn.execute(statement, *args)

    return run


def bp(device: str, when: datetime) -> Step:
    async def run(pool: asyncpg.Pool) -> None:
        await ingest(pool, [bp_at(device, when)], now=when)

    return run


def weight(device: str, when: datetime, kg: float) -> Step:
    async def run(pool: asyncpg.Pool) -> None:
        await ingest(pool, [raw_reading(device, "weight", when, weight=kg)], now=when)

    return run


async def set_up(pool: asyncpg.Pool) -> dict[float, list[Step]]:
    """The population before the first pass, and the events by the hour they happen at
    (each before that hour's pass)."""
    events: dict[float, list[Step]] = {}

    def on(hours: float, step: Step) -> None:
        events.setdefault(hours, []).append(step)

    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        devices = {}
        # A crowd in every zone: measuring most days at their own hour, some lapsing.
        for z, zone in enumerate(ZONES):
            for k in range(5):
                pid = f"crowd-{z}-{k}"
                devices[pid] = await add_patient(
                    conn, pid, timezone=zone, language="es" if k == 4 else "en"
                )
                for day in range(-8, 4):
                    if (day + k) % 3 == 0 and k != 3:
                        continue  # a day off; crowd-*-3 measures daily, then stops
                    if k == 3 and day > 0:
                        continue
                    when = START + timedelta(days=day, hours=(z * 5 + k * 3) % 24)
                    on((when - START) / timedelta(hours=1), bp(devices[pid], when))
        # A week since enrolment comes at 19:00 on the first day (gap: a settled patient).
        devices["new-week"] = await add_patient(conn, "new-week", timezone=LA)
        await conn.execute(
            "UPDATE patients SET created_at = $1 WHERE id = 'new-week'",
            at(19) - timedelta(weeks=1),
        )
        on(-100, bp(devices["new-week"], at(-100)))
        # A NEWS2 high alert leaves its 7-day window at 09:30 on the first day (calm-gap).
        devices["news2"] = await add_patient(conn, "news2", timezone=MADRID)
        await alert(conn, "news2", "news2.aggregate", "HIGH", at(9.5) - timedelta(days=7), at(-100))
        on(-100, bp(devices["news2"], at(-100)))
        # Turns 65 on 1 November in Tokyo (senior: streak).
        devices["birthday"] = await add_patient(conn, "birthday", timezone=TOKYO)
        await conn.execute(
            "UPDATE patients SET birth_date = $1 WHERE id = 'birthday'", date(1961, 11, 1)
        )
        for day in range(-3, 3):
            on(day * 24 - 1, bp(devices["birthday"], at(day * 24 - 1)))
        # In a crisis until 16:00 (nudge), without consent, opted out, without a phone.
        for pid in ("crisis", "consent", "optout", "phone"):
            devices[pid] = await add_patient(conn, pid, timezone=NY)
        await alert(conn, "crisis", "bp.critical", "CRITICAL", at(-20))
        await conn.execute("UPDATE patients SET sms_consent = false WHERE id = 'consent'")
        await conn.execute("UPDATE patients SET sms_opted_out_at = $1 WHERE id = 'optout'", at(-5))
        await conn.execute("UPDATE patients SET phone = NULL WHERE id = 'phone'")
        # Alerts resolved now and resolved with a time a little ahead of the planner's clock.
        for pid in ("resolved-now", "resolved-ahead"):
            devices[pid] = await add_patient(conn, pid, timezone=KOLKATA)
            await alert(conn, pid, "bp.high", "HIGH", at(-30))
        # A heart-failure patient's weight rising daily; a weight alert open for a while.
        devices["weigher"] = await add_patient(
            conn, "weigher", programs=("heart_failure",), timezone=MADRID, device_kind="scale"
        )
        for day in range(-3, 4):
            when = START + timedelta(days=day, hours=-4)
            on(
                (when - START) / timedelta(hours=1),
                weight(devices["weigher"], when, 80 + 0.3 * day),
            )
        await alert(conn, "weigher", "weight.gain", "MEDIUM", at(20))
        # Daily streaks, in a cooldown of a day that ends mid-morning (streak).
        devices["streaker"] = await add_patient(conn, "streaker", timezone=NY)
        await conn.execute(
            "UPDATE patients SET birth_date = '1950-01-01' WHERE id IN ('streaker', 'mover')"
        )
        for day in range(-3, 4):
            when = START + timedelta(days=day, hours=2 - day)
            on((when - START) / timedelta(hours=1), bp(devices["streaker"], when))
        # Moves from Los Angeles to Tokyo on the second day.
        devices["mover"] = await add_patient(conn, "mover", timezone=LA)
        for day in range(-3, 4):
            when = START + timedelta(days=day, hours=1)
            on((when - START) / timedelta(hours=1), bp(devices["mover"], when))
        # Three messages today already: the daily cap, until local midnight.
        devices["capped"] = await add_patient(conn, "capped", timezone=MADRID)
        await conn.execute(
            """INSERT INTO campaign_sends (campaign, patient_id, occurrence, version, planned_at)
               SELECT 'other', 'capped', 'x' || n, 1, $1 FROM generate_series(1, 3) n""",
            at(-1),
        )
    ahead = "resolved-ahead"
    on(3, sql("UPDATE patients SET sms_consent = true WHERE id = 'consent'"))
    on(4, sql("UPDATE patients SET sms_opted_out_at = NULL WHERE id = 'optout'"))
    on(4, sql("UPDATE patients SET phone = '+15550100009' WHERE id = 'phone'"))

    async def resolved_now(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await resolve(conn, "resolved-now", at(5))

    async def resolved_later(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await resolve(conn, ahead, at(6) + timedelta(minutes=20))

    async def crisis_over(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await resolve(conn, "crisis", at(4))

    async def weight_alert_over(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await resolve(conn, "weigher", at(44))

    on(5, resolved_now)
    on(6, resolved_later)
    on(4, crisis_over)
    on(44, weight_alert_over)
    on(30, sql("UPDATE patients SET timezone = $1 WHERE id = 'mover'", TOKYO))

    async def enrol_late(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            devices["late"] = await add_patient(conn, "late", timezone=KOLKATA)
            await conn.execute("UPDATE patients SET created_at = $1 WHERE id = 'late'", at(25))

    on(25, enrol_late)

    async def late_reading(pool: asyncpg.Pool) -> None:
        await ingest(pool, [bp_at(devices["late"], at(27.5))], now=at(27.5))

    on(27.5, late_reading)
    # Monday 2 November, 10:00 in Madrid (09:00 UTC, hour 44.7): the record says Spanish now.
    on(45, sql("UPDATE patients SET language = 'es' WHERE id = 'capped'"))
    # Readings before the first pass are stored now, in time order.
    for hours in sorted(h for h in events if h <= 0):
        for step in events.pop(hours):
            await step(pool)
    return events


async def run_scenario(pool: asyncpg.Pool, planner: CampaignPlanner) -> dict[str, Any]:
    events = await set_up(pool)
    for name, document in SEGMENTS.items():
        await publish_segment(pool, name, document)
    for name, document in CAMPAIGNS.items():
        await publish_campaign(pool, name, document)
    full_passes = parted = 0
    for n in range(PASSES):
        now = at(n)
        for hours in sorted(h for h in events if h <= n):
            for step in events.pop(hours):
                await step(pool)
        result = await planner.tick(now)
        assert result.ran
        assert not result.skipped, result.skipped
        full_passes += len(result.full)
        parted += len(result.parts)
        if n == 10:  # the same instant twice: nothing new
            assert sum((await planner.tick(now)).planned.values()) == 0
    async with pool.acquire() as conn:
        outbox = await conn.fetch(
            """SELECT dedupe_key, payload, created_at FROM outbox
                WHERE payload->>'template' = 'campaign' ORDER BY dedupe_key"""
        )
        sends = await conn.fetch(
            """SELECT campaign, patient_id, occurrence, version, planned_at FROM campaign_sends
                WHERE campaign <> 'other' ORDER BY campaign, patient_id, occurrence"""
        )
        # The days both kinds of pass counted from (migration 0036) against patient_days.
        bits = await conn.fetch("SELECT * FROM patient_day_bits ORDER BY patient_id")
        days = await conn.fetch(DAY_BITS)
    return {
        "day_bits": ([tuple(r) for r in bits], [tuple(r) for r in days]),
        "outbox": [dict(r) for r in outbox],
        "sends": [tuple(r) for r in sends],
        "full_passes": full_passes,
        "parted": parted,
    }


# Each patient's bitmap of days as patient_days gives it: newest and oldest day, bit k for
# the newest day - k.
DAY_BITS = """
    SELECT patient_id, max(day), min(day),
           sum(CASE WHEN x.last - day < 62 THEN 1::bigint << (x.last - day) END)::bigint
      FROM patient_days JOIN (SELECT patient_id, max(day) AS last FROM patient_days
                               GROUP BY 1) x USING (patient_id)
     GROUP BY 1 ORDER BY 1"""


@contextlib.asynccontextmanager
async def fresh_pool(services: ServiceEndpoints, name: str) -> AsyncIterator[asyncpg.Pool]:
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        pool = await create_pool(with_database(services.database_url, name), size=4)
        try:
            yield pool
        finally:
            await pool.close()
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def runs(services: ServiceEndpoints, template_db: str) -> dict[str, dict[str, Any]]:
    out = {}
    modes = (("incremental", 1e9, 1), ("parts", 1e9, 2), ("full", 0.0, 1))
    for mode, reconcile_s, connections in modes:
        async with fresh_pool(services, f"planner_{mode}_{os.getpid()}") as pool:
            planner = CampaignPlanner(
                pool, daily_cap=3, reconcile_s=reconcile_s, connections=connections
            )
            out[mode] = await run_scenario(pool, planner)
    return out


async def test_incremental_passes_plan_what_evaluating_everyone_plans(
    runs: dict[str, dict[str, Any]],
) -> None:
    incremental, full = runs["incremental"], runs["full"]
    for run in runs.values():  # what the passes counted days from is patient_days
        kept, counted = run["day_bits"]
        assert kept == counted
        assert len(kept) > 10
    assert incremental["sends"] == full["sends"]
    assert incremental["outbox"] == full["outbox"]
    # Incremental indeed: each campaign was evaluated in full at its first pass only.
    assert incremental["full_passes"] == len(CAMPAIGNS)
    assert full["full_passes"] == len(CAMPAIGNS) * PASSES
    assert incremental["parted"] == 0
    assert full["parted"] == 0
    # The zones' passes split by a hash of the patient id over two connections (two
    # transactions) plan the same, to the message: a patient's daily cap, dedupe and
    # cooldown are that patient's rows only.
    parts = runs["parts"]
    assert parts["parted"] > 0
    assert parts["sends"] == full["sends"]
    assert parts["outbox"] == full["outbox"]
    planned = {(c, p): when for c, p, _, _, when in full["sends"]}

    def hour(campaign: str, patient: str) -> float:
        return (planned[(campaign, patient)] - START) / timedelta(hours=1)

    # Each event kind of the table decided a message at the pass right after it.
    assert hour("gap", "new-week") == 19  # a week since enrolment came
    assert hour("calm-gap", "news2") == 10  # a NEWS2 alert left its window
    assert hour("resolved", "resolved-now") == 5  # an alert resolved (data)
    assert hour("resolved", "resolved-ahead") == 7  # its resolved_at came (time)
    assert hour("resolved", "crisis") == 4
    assert hour("first", "late") == 28  # a patient enrolled, then a first reading
    assert hour("weekly", "capped") == 45  # language edited after the weekly time
    assert ("streak", "birthday") in planned  # 65 from local midnight on 1 November
    for pid in ("crisis", "consent", "optout", "phone"):  # record edits, alert resolved
        assert ("nudge", pid) in planned
    assert ("rising", "weigher") in planned
    streaks = [c for c, p, *_ in full["sends"] if (c, p) == ("streak", "streaker")]
    assert len(streaks) >= 2  # again once the cooldown of a day is over
