"""The rule engine inside the ingest unit of work, against a real PostgreSQL.

State survives a restart (rebuilt from stored readings), a failed transaction leaves
no trace in memory, the missing-data timer tells a silent device from a patient who
stopped measuring, a newest normal reading marks the condition cleared, and a newly
published program version is picked up without a restart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from rpm.domain import RawMessage
from rpm.pipeline import IngestPipeline
from rpm.storage import registry, rule_programs
from rpm.validation import ClockPolicy
from rules.programs import RuleBook

NOW = datetime.now(UTC).replace(microsecond=0)


def msg(device: str, payload: object, at: datetime = NOW) -> RawMessage:
    body = json.dumps(payload).encode()
    return RawMessage("mqtt", "canonical", device, body, at, f"rpm/v1/devices/{device}/readings")


def weight(kg: float, hours_ago: float) -> dict[str, object]:
    at = (NOW - timedelta(hours=hours_ago)).isoformat()
    return {"metric": "weight", "measured_at": at, "values": {"weight": kg}}


def bp(sys_: int, dia: int, minutes_ago: float) -> dict[str, object]:
    at = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return {
        "metric": "blood_pressure",
        "measured_at": at,
        "values": {"systolic": sys_, "diastolic": dia},
    }


def pipeline(pool: asyncpg.Pool, now: datetime = NOW) -> IngestPipeline:
    return IngestPipeline(pool, ClockPolicy(), now=lambda: now, rules_refresh_s=0)


@pytest.fixture
async def hf_patient(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await rule_programs.seed_builtin(conn)
        await registry.upsert_patient(
            conn,
            patient_id="pat-hf",
            display_name="Heart Failure Example",
            phone="+15550100002",
            sms_consent=True,
            programs=["heart_failure", "hypertension"],
        )
        for device, kind in (("scale-1", "scale"), ("cuff-1", "bp_cuff")):
            await registry.enroll_device(
                conn,
                device_id=device,
                kind=kind,
                patient_id="pat-hf",
                since=NOW - timedelta(days=10),
            )


async def alerts(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            "SELECT rule_id, severity, explanation, evidence, condition_cleared_at"
            " FROM alerts ORDER BY id"
        )


async def test_weight_gain_fires_with_a_plain_language_explanation(
    pool: asyncpg.Pool, hf_patient: None
) -> None:
    p = pipeline(pool)
    await p.process([msg("scale-1", weight(81.0, 22))])
    result = await p.process([msg("scale-1", weight(82.2, 0))])
    assert len(result.alerts_opened) == 1
    [alert] = await alerts(pool)
    assert alert["rule_id"] == "hf.weight_gain_24h"
    assert alert["severity"] == "HIGH"
    assert alert["explanation"].startswith("Weight up 1.2 kg (2.6 lb) in 22 h: 81.0 kg → 82.2 kg")
    assert alert["evidence"]["reference"]["value"] == 81.0


async def test_a_restart_forgets_nothing(pool: asyncpg.Pool, hf_patient: None) -> None:
    before = pipeline(pool)
    for day in range(6, 0, -1):
        await before.process([msg("scale-1", weight(80.0 + 0.4 * (6 - day), 24 * day))])
    # A new process: its engine has no state until the patient's next reading.
    after = pipeline(pool)
    assert not after.engine.knows("pat-hf")
    await after.process([msg("scale-1", weight(82.4, 0))])
    async with pool.acquire() as conn:
        rules = await conn.fetchval(
            "SELECT array_agg(c->>'rule_id') FROM alerts, jsonb_array_elements(contributions) c"
        )
    # 7-day gain of 2.4 kg needs the readings stored before the restart. (The gain and the
    # trend are one clinical event, group hf.weight_gain: one episode listing both.)
    assert "hf.weight_gain_7d" in rules
    assert "hf.weight_trend" in rules
    assert len(await alerts(pool)) == 1


async def test_a_failed_unit_of_work_leaves_no_state_behind(
    pool: asyncpg.Pool, hf_patient: None
) -> None:
    p = pipeline(pool)
    await p.process([msg("scale-1", weight(81.0, 22))])
    assert p.engine.knows("pat-hf")

    async def fail_after_processing(conn: asyncpg.Connection, batch: list[RawMessage]) -> None:
        await p._process(conn, batch)
        raise RuntimeError("the transaction dies before commit")

    with pytest.raises(RuntimeError):
        await p._in_transaction(fail_after_processing, [msg("scale-1", weight(82.2, 1))])
    assert not p.engine.knows("pat-hf")
    assert await alerts(pool) == []
    # The retry evaluates the reading once, against the state rebuilt from the database.
    result = await p.process([msg("scale-1", weight(82.2, 1))])
    assert len(result.alerts_opened) == 1


async def test_the_newest_normal_reading_marks_the_condition_cleared(
    pool: asyncpg.Pool, hf_patient: None
) -> None:
    p = pipeline(pool)
    await p.process([msg("cuff-1", bp(190, 100, 30))])
    # A late normal reading measured before the crisis does not clear it.
    await p.process([msg("cuff-1", bp(120, 80, 60))])
    [alert] = await alerts(pool)
    assert alert["condition_cleared_at"] is None
    # Within the hysteresis band (limit 180 - 5): not clear either.
    await p.process([msg("cuff-1", bp(178, 90, 20))])
    assert (await alerts(pool))[0]["condition_cleared_at"] is None
    await p.process([msg("cuff-1", bp(130, 80, 10))])
    [alert] = await alerts(pool)
    assert alert["condition_cleared_at"] == NOW - timedelta(minutes=10)
    # Each reading keeps the interpretation its threshold rules gave it (for the record).
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT v1::text AS s, interpretation FROM readings ORDER BY measured_at"
        )
    assert [(r["s"], r["interpretation"]) for r in stored] == [
        ("120", "N"),  # systolic: blood pressure's slot 1
        ("190", "HH"),
        ("178", "N"),  # inside the hysteresis band, but below the crisis limit itself
        ("130", "N"),
    ]


async def test_missing_weights_tell_a_silent_device_from_a_patient_not_measuring(
    pool: asyncpg.Pool, hf_patient: None
) -> None:
    await pipeline(pool).process([msg("scale-1", weight(81.0, 40))])
    async with pool.acquire() as conn:
        # The scale checked in an hour ago (a heartbeat): the device works.
        await conn.execute(
            "UPDATE devices SET last_seen_at = $1 WHERE id = 'scale-1'", NOW - timedelta(hours=1)
        )
        await conn.execute(
            "UPDATE devices SET last_seen_at = $1 WHERE id = 'cuff-1'", NOW - timedelta(hours=1)
        )
    result = await pipeline(pool).check_missing()
    rows = {a["rule_id"]: a for a in await alerts(pool)}
    assert "hf.weight_missing" in rows
    assert rows["hf.weight_missing"]["evidence"]["cause"] == "patient_not_measuring"
    assert "No weight reading for 40 h" in rows["hf.weight_missing"]["explanation"]
    # No BP reading since enrollment 10 days ago: the cuff's rule fires too.
    assert "htn.bp_missing" in rows
    assert len(result.alerts_opened) == 2
    # Evaluated again: the same episodes, no duplicates.
    again = await pipeline(pool).check_missing()
    assert again.alerts_opened == []

    # The scale goes silent as well, later: the explanation changes with the cause.
    async with pool.acquire() as conn:
        await conn.execute(
            "DELETE FROM alert_events WHERE alert_id IN"
            " (SELECT id FROM alerts WHERE rule_id = 'hf.weight_missing')"
        )
        await conn.execute("DELETE FROM alerts WHERE rule_id = 'hf.weight_missing'")
    later = NOW + timedelta(hours=48)
    await pipeline(pool, later).check_missing()
    rows = {a["rule_id"]: a for a in await alerts(pool)}
    assert rows["hf.weight_missing"]["evidence"]["cause"] == "device_silent"

    # A weight arrives: the missing-data condition is over.
    p = pipeline(pool, later)
    await p.process([msg("scale-1", weight(81.2, -47.5), at=later)])
    rows = {a["rule_id"]: a for a in await alerts(pool)}
    assert rows["hf.weight_missing"]["condition_cleared_at"] is not None
    assert rows["htn.bp_missing"]["condition_cleared_at"] is None


async def test_a_published_program_version_is_used_without_a_restart(
    pool: asyncpg.Pool, hf_patient: None
) -> None:
    p = pipeline(pool)
    await p.process([msg("scale-1", weight(81.0, 22))])
    stricter = RuleBook.builtin().programs["heart_failure"]
    rules = [
        r.model_copy(update={"params": {**r.params, "min_change": 0.5}})
        if r.id == "hf.weight_gain_24h"
        else r
        for r in stricter.rules
    ]
    async with pool.acquire() as conn:
        version = await rule_programs.publish(
            conn, stricter.model_copy(update={"rules": tuple(rules)}), "nurse-lead", "tighter"
        )
    assert version == 2
    result = await p.process([msg("scale-1", weight(81.6, 0))])
    assert len(result.alerts_opened) == 1
    [alert] = await alerts(pool)
    assert alert["evidence"]["params"]["min_change"] == 0.5
