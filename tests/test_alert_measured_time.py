"""Measured time decides, and one row per clinical event, through the real unit of work and
PostgreSQL (issue 17, items 1 and 3; the pure vectors are in tests/test_alert_policy.py).

Nurse actions happen at the database's clock, so readings are measured relative to it: a
reading "before the resolution" is measured before the moment the test resolved."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from alerts.lifecycle import Action
from alerts.policy import SnoozeCaps
from rpm.domain import Severity
from rpm.pipeline import IngestPipeline
from rpm.storage import alert_actions, alert_reads, registry, rule_programs
from rpm.storage import alerts as alert_store
from rpm.validation import ClockPolicy
from tests.alert_helpers import bp, msg

H = timedelta(hours=1)
S = timedelta(seconds=1)


def ingest(pool: asyncpg.Pool) -> IngestPipeline:
    return IngestPipeline(pool, ClockPolicy(), rules_refresh_s=0)  # the wall clock


async def enrol(pool: asyncpg.Pool, patient: str, *programs: str) -> str:
    """A patient with a cuff; returns the cuff's id."""
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        await registry.upsert_patient(
            conn,
            patient_id=patient,
            display_name="Test Patient",
            phone="+15550100123",
            sms_consent=True,
            programs=list(programs),
        )
        await registry.enroll_device(
            conn,
            device_id=f"cuff-{patient}",
            kind="bp_cuff",
            patient_id=patient,
            since=datetime.now(UTC) - 30 * H,
        )
    return f"cuff-{patient}"


async def resolve(pool: asyncpg.Pool, alert_id: int) -> datetime:
    async with pool.acquire() as conn:
        await alert_actions.transition(conn, alert_id, Action.RESOLVE, "nurse-ana", "Called.")
        resolved_at: datetime = await conn.fetchval(
            "SELECT resolved_at FROM alerts WHERE id = $1", alert_id
        )
    return resolved_at


async def rows(pool: asyncpg.Pool, patient: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch("SELECT * FROM alerts WHERE patient_id = $1 ORDER BY id", patient)
        )


async def patient_sms(pool: asyncpg.Pool, patient: str) -> list[str]:
    async with pool.acquire() as conn:
        return [
            r["dedupe_key"]
            for r in await conn.fetch(
                "SELECT dedupe_key FROM outbox WHERE payload->>'patient_id' = $1"
                " AND payload->>'recipient' = 'patient' ORDER BY id",
                patient,
            )
        ]


async def test_a_crisis_reading_measured_before_the_resolution_arriving_late_opens_nothing(
    pool: asyncpg.Pool,
) -> None:
    # The case: SBP > 180 (ACC/AHA 2017 §11.2) opened a critical episode; the nurse
    # resolved it; a crisis reading measured before the resolution arrives hours later (a
    # phone that synced late). It is late evidence on the resolved episode: no new episode,
    # no escalation, no SMS; the episode's history shows it.
    cuff = await enrol(pool, "pat-late", "hypertension")
    p = ingest(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    [first] = (await p.process([msg(cuff, bp(192, 124, now - 4 * H))])).alerts_opened
    resolved_at = await resolve(pool, first)

    late = await p.process([msg(cuff, bp(210, 130, now - 3 * H))])
    assert late.stored == 1
    assert late.alerts_opened == []
    assert late.alerts_changed == [first]
    [row] = await rows(pool, "pat-late")
    assert row["state"] == "resolved"
    assert row["next_escalation_at"] is None
    assert row["occurrences"] == 2
    assert await patient_sms(pool, "pat-late") == [f"sms:alert:{first}:open"]
    async with pool.acquire() as conn:
        history = await alert_reads.events(conn, first)
    assert [e["action"] for e in history] == ["open", "resolve", "late_evidence"]
    note = history[-1]["note"]
    assert "before the resolution" in note
    assert "210/130" in note

    # Measured after the resolution (a second later): a new episode, as before (the crisis
    # and stage 2 in 3 of 5 readings fire on it: one event, group ``bp.high``).
    after = await p.process([msg(cuff, bp(200, 125, resolved_at + S))])
    [second] = after.alerts_opened
    assert second != first
    assert await patient_sms(pool, "pat-late") == [
        f"sms:alert:{first}:open",
        f"sms:alert:{second}:open",
    ]


async def test_one_low_blood_pressure_is_one_alert_one_sms(pool: asyncpg.Pool) -> None:
    # SBP 84 < 90 (htn.low_bp) scores NEWS2 3 + pulse 112 scores 2 (RCP NEWS2 2017): both
    # rules fire on one reading; the nurse sees one row, the patient gets one SMS.
    cuff = await enrol(pool, "pat-low", "hypertension")
    now = datetime.now(UTC).replace(microsecond=0)
    reading = bp(84, 52, now - H)
    reading["values"] = {**reading["values"], "pulse": 112}  # type: ignore[dict-item]
    result = await ingest(pool).process([msg(cuff, reading)])
    [alert_id] = result.alerts_opened
    async with pool.acquire() as conn:
        alert = await alert_reads.get(conn, alert_id)
    assert alert is not None
    assert alert["rule_id"] == "htn.low_bp"
    assert alert["rules"] == ["htn.low_bp", "news2.partial"]
    assert [c["severity"] for c in alert["contributions"]] == ["HIGH", "HIGH"]
    assert "NEWS2" in alert["contributions"][1]["explanation"]
    assert len(await rows(pool, "pat-low")) == 1
    assert await patient_sms(pool, "pat-low") == [f"sms:alert:{alert_id}:open"]


def _world(seed: int, n: int) -> list[int]:
    """A delivery order of ``n`` late readings, drawn from a fixed seed."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


async def _summary(pool: asyncpg.Pool, patient: str) -> list[tuple[Any, ...]]:
    return [
        (
            r["state"],
            r["severity"],
            r["occurrences"],
            r["rule_id"],
            [c["rule_id"] for c in r["contributions"]],
        )
        for r in await rows(pool, patient)
    ]


async def test_any_delivery_order_gives_the_same_episodes_through_the_pipeline(
    pool: asyncpg.Pool,
) -> None:
    # The same readings reach four patients' pipelines in four orders (seeded): each time the
    # first crisis reading arrives in time, the nurse resolves, and the rest arrive in any
    # order, some measured before the resolution and some after. The episodes are the same.
    now = datetime.now(UTC).replace(microsecond=0)
    summaries = []
    for seed in range(4):
        patient = f"pat-order-{seed}"
        cuff = await enrol(pool, patient, "hypertension")
        p = ingest(pool)
        [first] = (await p.process([msg(cuff, bp(185, 100, now - 5 * H))])).alerts_opened
        resolved_at = await resolve(pool, first)
        readings = [
            bp(195, 110, now - 4 * H),  # before the resolution: late evidence
            bp(188, 126, now - 2 * H),  # before the resolution
            bp(182, 100, resolved_at),  # at the resolution's instant: counts as after
            bp(199, 121, resolved_at + S),  # after: the new episode
            bp(186, 101, resolved_at + 2 * S),
        ]
        order = _world(seed, len(readings))
        if seed % 2:  # half the worlds deliver some readings together in one batch
            await p.process([msg(cuff, readings[i]) for i in order[:3]])
            order = order[3:]
        for i in order:
            await p.process([msg(cuff, readings[i])])
        summaries.append(await _summary(pool, patient))
    # Each episode: its crisis readings, and stage 2 in 3 of the last 5 readings (ACC/AHA
    # 2017 §3.1) seen on the same readings, one event (group ``bp.high``).
    both = ["bp.hypertensive_crisis", "htn.stage2_persistent"]
    assert summaries[0] == [
        ("resolved", "CRITICAL", 4, "bp.hypertensive_crisis", both),
        ("open", "CRITICAL", 6, "bp.hypertensive_crisis", both),
    ]
    assert all(s == summaries[0] for s in summaries)


async def test_snooze_windows_are_kept_after_they_end(pool: asyncpg.Pool) -> None:
    # A reading measured inside a snooze window is snoozed whenever it arrives, so the
    # window outlives the snooze: an unsnooze ends it now, a new snooze ends the previous.
    cuff = await enrol(pool, "pat-snooze", "hypertension")
    now = datetime.now(UTC).replace(microsecond=0)
    [alert_id] = (await ingest(pool).process([msg(cuff, bp(192, 124, now - H))])).alerts_opened
    caps = SnoozeCaps()
    async with pool.acquire() as conn:
        await alert_actions.snooze(
            conn,
            alert_id,
            duration=timedelta(minutes=20),
            actor="nurse-ana",
            reason=None,
            caps=caps,
        )
        await alert_actions.snooze(
            conn,
            alert_id,
            duration=timedelta(minutes=30),
            actor="nurse-ana",
            reason=None,
            caps=caps,
        )
        await alert_actions.unsnooze(conn, alert_id, "nurse-ana")
        key = ("pat-snooze", "bp.high")
        windows = (await alert_store.snooze_windows(conn, {key: now - H}))[key]
        ended: datetime = await conn.fetchval("SELECT now()")
    assert len(windows) == 2
    assert all(w.since is not None and w.since <= w.until <= ended for w in windows)
    assert windows[0].until <= windows[1].since  # type: ignore[operator]
    assert {w.max_severity for w in windows} == {Severity.CRITICAL}
